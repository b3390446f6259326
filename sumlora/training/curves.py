"""The loss plot of a training run (plots/training/loss.png)."""

from __future__ import annotations

from pathlib import Path

from sumlora.figures import pyplot, save_png


def loss_curves(log_history: list[dict], path: str | Path) -> None:
    """Training and validation loss over optimizer steps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, name in (("loss", "training"), ("eval_loss", "validation")):
        pts = [(h["step"], h[key]) for h in log_history if key in h and "step" in h]
        if pts:
            ax.plot(*zip(*pts), marker="o" if key == "eval_loss" else ".", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("QLoRA training")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, Path(path))
    plt.close(fig)
