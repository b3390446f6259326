"""QLoRA-fine-tune the base model on the tokenized training split.

    python -m stages.train data/tokenized models/base models/adapter models/checkpoints plots/training metrics/train.json

Writes the adapter (safetensors + tokenizer + prompt template) atomically, loss curves
with dvclive (and loss.png), final losses, steps and parameter counts as metrics (identical
for identical runs), and wall time in plots/training/timing.json. Resumes from the last
complete checkpoint of the same run when one exists (see sumlora/training.py).

Data-parallel on several devices or machines: launch it with accelerate (or torchrun),
e.g. ``accelerate launch --multi_gpu --num_processes 2 -m stages.train ...``; each process
trains on its own share of every batch and only the main process writes outputs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sumlora import atomic, cli
from sumlora.params import load_params
from sumlora.prompt import DEFAULT


LOW_DISK = 16 << 20  # bytes free under which a failed save is reported as a full disk


def _next_run(checkpoints_dir: Path) -> str:
    from sumlora.training import last_complete_checkpoint

    ckpt = last_complete_checkpoint(checkpoints_dir)
    return (f"the next `dvc repro` resumes from {ckpt}" if ckpt
            else "the next `dvc repro` starts training again (no checkpoint yet)")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("tokenized_dir", "base_dir", "adapter_dir", "checkpoints_dir", "live_dir", "metrics"):
        ap.add_argument(name, type=Path)
    args = ap.parse_args(argv)
    params = load_params()
    cli.offline()
    from sumlora.training import train

    try:
        metrics, timing = train(params, args.tokenized_dir, args.base_dir, args.adapter_dir, args.checkpoints_dir,
                                args.live_dir, DEFAULT)
    except KeyboardInterrupt:  # Ctrl-C: say where the next run picks up, not a 100-line traceback
        print(f"interrupted; {_next_run(args.checkpoints_dir)}", file=sys.stderr)
        sys.exit(130)
    # a full disk: torch.save says only "unexpected pos ...", safetensors raises its own error type
    except Exception as e:  # noqa: BLE001 - re-raised unless the disk is (nearly) full
        free = shutil.disk_usage(args.checkpoints_dir).free if args.checkpoints_dir.exists() else None
        if free is None or free > LOW_DISK:
            raise
        print(f"error: {args.checkpoints_dir}: No space left on device ({free // 1024} KiB free) while saving "
              f"a checkpoint ({str(e).splitlines()[0][:200]}); free space there; {_next_run(args.checkpoints_dir)}",
              file=sys.stderr)
        sys.exit(1)
    if metrics is None:
        return  # not the main process of a multi-process run: the main one writes every output
    atomic.write_json(args.metrics, metrics)
    print(f"adapter saved to {args.adapter_dir}")
    print(f"trained to step {metrics['steps']} ({timing['steps_this_run']} steps in {timing['runtime_s']} s): "
          f"eval loss {metrics['eval_loss']}; {timing['real_tokens_per_s']} real tokens/s, "
          f"padding {timing['padding_fraction']:.1%}, peak memory {timing['peak_rss_mb']} MiB")


if __name__ == "__main__":
    cli.run(main)
