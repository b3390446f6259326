"""PNG plots, viewable without DVC (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    tmp.replace(path)


def loss_curves(log_history: list[dict], path: str | Path) -> None:
    """Training and validation loss over optimizer steps."""
    plt = _pyplot()
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
    _save(fig, Path(path))
    plt.close(fig)


def rouge_bars(metrics: dict, path: str | Path, scoring: str = "all_refs") -> None:
    """Grouped bars: ROUGE of each system."""
    plt = _pyplot()
    names = [n for n in ("base", "base_chat", "finetuned") if n in metrics]
    label = {"base": "base (training prompt)", "base_chat": "base (chat, zero-shot)", "finetuned": "fine-tuned"}
    types = list(metrics[names[0]][scoring])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(types))]
        vals = [metrics[n][scoring][t] for t in types]
        bars = ax.bar(xs, vals, width, label=label[n])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("F1 x100")
    ax.set_title(f"ROUGE on {metrics['num_dialogues']} test dialogues ({scoring.replace('_', ' ')})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, Path(path))
    plt.close(fig)
