"""QLoRA-fine-tune the base model on the tokenized training split.

    python -m stages.train data/tokenized models/base models/adapter models/checkpoints plots/training metrics/train.json

Writes the adapter (safetensors + tokenizer + prompt template) atomically, loss curves
with dvclive, and final losses, steps, runtime and parameter counts as metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sumlora import atomic, cli
from sumlora.params import load_params
from sumlora.prompt import DEFAULT


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("tokenized_dir", "base_dir", "adapter_dir", "checkpoints_dir", "live_dir", "metrics"):
        ap.add_argument(name, type=Path)
    args = ap.parse_args(argv)
    params = load_params()
    cli.offline()
    from sumlora.training import train

    metrics = train(params, args.tokenized_dir, args.base_dir, args.adapter_dir, args.checkpoints_dir,
                    args.live_dir, DEFAULT)
    atomic.write_json(args.metrics, metrics)
    print(f"trained {metrics['steps']} steps in {metrics['runtime_s']} s: eval loss {metrics['eval_loss']}, "
          f"{metrics['train_tokens_per_s']} tokens/s")


if __name__ == "__main__":
    cli.run(main)
