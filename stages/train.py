"""QLoRA-fine-tune the base model on the tokenized training split.

    python -m stages.train data/tokenized models/base models/adapter models/checkpoints plots/training \
        metrics/train.json

Writes every output of the stage from what sumlora.training.run.train returns: the adapter
(safetensors, tokenizer, the prompt template of the tokenized data, adapter_info.json) and
the curves directory (dvclive files, loss.png, timing.json with wall time and memory), each
moved into place whole, and metrics/train.json (final losses, steps, parameter counts:
identical for identical runs). Resumes an interrupted run from its last complete checkpoint
(the policy: sumlora/training/checkpoints.py).

Data-parallel on several devices or machines: launch it with accelerate (or torchrun),
e.g. ``accelerate launch --multi_gpu --num_processes 2 -m stages.train ...``; each process
trains on its own share of every batch and only the main process writes outputs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sumlora.core import atomic, cli, outputs
from sumlora.core.params import load_params
from sumlora.prompt import PromptTemplate

LOW_DISK = 16 << 20  # bytes free under which a failed save is reported as a full disk


def _next_run(checkpoints_dir: Path) -> str:
    from sumlora.training.checkpoints import last_complete_checkpoint

    ckpt = last_complete_checkpoint(checkpoints_dir)
    return (f"the next `dvc repro` resumes from {ckpt}" if ckpt
            else "the next `dvc repro` starts training again (no checkpoint yet)")


def check_finite(model, metrics: dict) -> None:
    """Refuse to publish an adapter with a non-finite weight or validation loss, naming the first one."""
    import math

    import torch

    from sumlora.core.errors import ModelError

    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p.detach()).all():
            raise ModelError(f"training diverged: the adapter weight {name} holds NaN or infinity; nothing was "
                             "published. Lower train.learning_rate")
    if not math.isfinite(metrics["eval_loss"]):
        raise ModelError(f"training diverged: the validation loss is {metrics['eval_loss']}; nothing was published. "
                         "Lower train.learning_rate")


def parser():
    from sumlora.training.checkpoints import owns

    ap = cli.path_parser("stages.train", __doc__, "in:tokenized_dir", "in:base_dir", "dir:adapter_dir")
    # the resume cache is not a DVC output: a directory that holds a run's run.json is this stage's
    cli.output(ap, "checkpoints_dir", kind="dir", owned_if=owns)
    for name, kind in (("live_dir", "dir"), ("metrics", "file")):
        cli.output(ap, name, kind=kind)
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    cli.offline()
    from sumlora.modeling import ADAPTER_INFO, adapter_info, write_model_dir
    from sumlora.training.checkpoints import mark_finished
    from sumlora.training.curves import loss_curves
    from sumlora.training.run import end_processes, train

    template = PromptTemplate.load(args.tokenized_dir)  # the one the rows were rendered with
    # The curves are written beside live_dir and moved into place whole at the end, so a killed run
    # leaves the previous complete live_dir (a resumed run replays its curve so far into a fresh one).
    partial = args.live_dir.with_name(f".{args.live_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    outputs.allow(partial)  # a temporary sibling of live_dir, which the write policy cleared
    try:
        result = train(params, args.tokenized_dir, args.base_dir, args.checkpoints_dir, partial)
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
    if result.main:  # the other processes of a multi-process run write nothing
        check_finite(result.model, result.metrics)  # a diverged run publishes nothing
        write_model_dir(args.adapter_dir, result.model, result.tokenizer, template, ADAPTER_INFO,
                        adapter_info(args.base_dir, result.base_sha256))
        mark_finished(args.checkpoints_dir, result.fingerprint)  # published: never resumed
        loss_curves(result.log_history, partial / "loss.png")
        atomic.write_json(partial / "timing.json", result.timing)
        atomic.replace_dir(partial, args.live_dir)
        atomic.write_json(args.metrics, result.metrics)
        metrics, timing = result.metrics, result.timing
        print(f"adapter saved to {args.adapter_dir}")
        print(f"trained to step {metrics['steps']} ({timing['steps_this_run']} steps in {timing['runtime_s']} s): "
              f"eval loss {metrics['eval_loss']}; {timing['real_tokens_per_s']} real tokens/s, "
              f"padding {timing['padding_fraction']:.1%}, peak memory {timing['peak_rss_mb']} MiB")
    end_processes()  # after the main process has written everything


if __name__ == "__main__":
    cli.run_stage(main)
