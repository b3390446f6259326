"""``train()``: put the pieces together, train, and return the model and its numbers.

The train stage (stages/train.py) writes every output from what this returns: the adapter,
the curves directory, the metrics. Only the dvclive curves are written while training runs,
into the directory the stage names (it moves it into place whole at the end).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PrinterCallback

from sumlora.core.cli import peak_rss_mb
from sumlora.core.device import environment, resolve_compute_dtype
from sumlora.core.errors import ModelError
from sumlora.core.params import Params
from sumlora.lora import prepare_qlora_model
from sumlora.modeling import base_identity
from sumlora.training.batching import PadCollator, grouped_by_length, load_split
from sumlora.training.checkpoints import resumable_checkpoint, run_fingerprint, step_of
from sumlora.training.trainer import callbacks, trainer_class, training_arguments


@dataclass
class TrainResult:
    """What a training run gives the stage (on the main process; the others get ``main=False`` and None)."""

    main: bool
    model: object = None
    tokenizer: object = None
    base_sha256: str | None = None  # identity of the base trained on, recorded beside the adapter
    fingerprint: str | None = None  # of the run, to mark it finished once the adapter is published
    metrics: dict | None = None  # identical for identical runs: metrics/train.json
    timing: dict | None = None  # wall time, throughput, memory: plots/training/timing.json
    log_history: list | None = None  # the Trainer's log, for the loss plot


def train(params: Params, tokenized_dir, base_dir, checkpoints_dir, live_dir) -> TrainResult:
    """Train a LoRA adapter on ``tokenized_dir``, resuming an interrupted run of the same fingerprint
    from ``checkpoints_dir``; dvclive curves go to ``live_dir`` (main process only) while it runs."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from dvclive import Live
    from transformers import set_seed

    refuse_sharding()
    # auto resolved once: the fingerprint (so a resume never mixes dtypes) and the Trainer see the dtype used
    dtype = resolve_compute_dtype(params.model.compute_dtype)
    params = replace(params, model=replace(params.model, compute_dtype=dtype))
    tp = params.train
    set_seed(params.seed)
    tokenized_dir = Path(tokenized_dir)
    train_ds = load_split(tokenized_dir / "train.jsonl")
    eval_ds = load_split(tokenized_dir / "validation.jsonl").remove_columns("row")
    if tp.max_eval_samples is not None and len(eval_ds) > tp.max_eval_samples:
        eval_ds = eval_ds.select(range(tp.max_eval_samples))
    eval_ds = shortest_first(eval_ds)  # batches of similar length: little padding (the loss is per row)

    model, tok = prepare_qlora_model(base_dir, params)
    trainable, total = model.get_nb_trainable_parameters()  # 4-bit weights counted as the weights they pack
    cuda = torch.cuda.is_available()
    # One process per device under `accelerate launch` / torchrun (data-parallel); else just one.
    state = PartialState(cpu=not cuda)
    train_ds = grouped_by_length(train_ds, tp, params.seed, state.num_processes)
    main = state.is_main_process
    base_sha256 = base_identity(base_dir)
    fingerprint = run_fingerprint(params, tokenized_dir, base_sha256, state.num_processes)
    with state.main_process_first():  # the main process clears stale checkpoints before the others look
        resume = resumable_checkpoint(checkpoints_dir, fingerprint, tp.max_steps)
    if main:
        print(f"resuming from {resume}" if resume else "training from scratch"
              + (f" on {state.num_processes} processes ({state.backend})" if state.num_processes > 1 else ""))
    if tp.optim.startswith("paged_") and not cuda:  # bitsandbytes warns at every optimizer state it makes
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU", category=UserWarning)
        if main:
            print(f"{tp.optim}: paging is not available on CPU, using the same optimizer unpaged")
    args = training_arguments(tp, params.seed, params.model.compute_dtype, checkpoints_dir)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) if main else None
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               data_collator=PadCollator(tok.pad_token_id),
                               callbacks=callbacks(live, tp.early_stopping_patience),
                               max_tokens_per_pass=tp.max_tokens_per_pass)
    trainer.remove_callback(PrinterCallback)  # its raw log dicts: the progress callback says the same, plainly
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - start
    eval_loss = published_eval_loss(trainer, tp.select)
    per_process = gather_object([{"rows": trainer.rows_trained, "tokens": trainer.tokens_trained,
                                  "padding": trainer.padding_trained}])
    if not main:
        return TrainResult(main=False)
    live.end()
    history = trainer.state.log_history
    train_losses = [h["loss"] for h in history if "loss" in h]
    steps = int(trainer.state.global_step)
    best = trainer.state.best_global_step if tp.select == "best" else None
    metrics = {
        "steps": steps,
        "chosen_step": int(best) if best else steps,  # the adapter published (train.select)
        "stopped_early": steps < tp.max_steps,
        "train_loss_last": round(float(train_losses[-1]), 4) if train_losses else None,
        "eval_loss": round(eval_loss, 4),
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_rows": len(train_ds),
        "eval_rows": len(eval_ds),
        "trainable_params": int(trainable),
        "total_params": int(total),
    }
    tokens = sum(p["tokens"] for p in per_process)
    timing = {"runtime_s": round(runtime, 1), "resumed_from": resume.name if resume else None,
              "device": "cuda" if cuda else "cpu",
              "steps_this_run": int(trainer.state.global_step) - (step_of(resume) if resume else 0),
              "processes": state.num_processes,
              "rows_per_process": [len(p["rows"]) for p in per_process],
              "rows_seen_by_several_processes": len(set.intersection(*[set(p["rows"]) for p in per_process]))
              if len(per_process) > 1 else 0,
              "padding_fraction": round(sum(p["padding"] for p in per_process)
                                        / max(1, sum(p["padding"] for p in per_process) + tokens), 4),
              "real_tokens_per_s": round(tokens / runtime, 1),
              "peak_rss_mb": peak_rss_mb(),
              "compute_dtype": params.model.compute_dtype,
              "attention": model.config._attn_implementation,  # train.attention resolved
              "compiled_blocks": params.train.compile_blocks,
              "environment": environment()}  # python -m sumlora.doctor --json
    return TrainResult(main=True, model=model, tokenizer=tok, base_sha256=base_sha256, fingerprint=fingerprint,
                       metrics=metrics, timing=timing, log_history=history)


def shortest_first(eval_ds):
    """The validation rows ordered by length (stable): forward-only batches of similar length, so almost no
    padding. The rows and the loss, a mean over rows, stay the same (what it saves: BENCHMARKS.md, validation
    loss, from benchmarks/results/eval-cpu.json)."""
    lengths = [len(x) for x in eval_ds["input_ids"]]
    return eval_ds.select(sorted(range(len(lengths)), key=lambda i: lengths[i]))


def published_eval_loss(trainer, select: str) -> float:
    """The validation loss of the adapter published: the best evaluation's (``select: best``), or the last step's,
    which the Trainer evaluates at the end of training; one more pass only if it did not (every process takes
    part)."""
    state = trainer.state
    if select == "best" and state.best_metric is not None:
        return float(state.best_metric)
    evals = [h for h in state.log_history if "eval_loss" in h]
    if evals and evals[-1]["step"] == state.global_step:
        return float(evals[-1]["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


def refuse_sharding() -> None:
    """Refuse a launch with FSDP or DeepSpeed (``accelerate launch`` with such a config): this stage trains
    data-parallel only. Sharded QLoRA needs what it does not do: the base loaded once and sharded instead of
    whole onto every device, float 4-bit storage (``bnb_4bit_quant_storage``) kept un-upcast by
    ``prepare_model_for_kbit_training``, and a full state dict gathered before the adapter is saved."""
    for env, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(env, "false").lower() in ("1", "true"):
            raise ModelError(f"launched with {what} ({env}=true): the train stage trains data-parallel only, one "
                             "whole 4-bit base per device; launch it with accelerate launch --multi_gpu instead "
                             "(README: Scaling past one device)")


def end_processes() -> None:
    """Several processes: wait for each other, then close the process group, so that none exits while
    another still uses it (an exit mid-collective can abort the process). Call it on every process once
    the main one has written the outputs."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
        torch.distributed.destroy_process_group()
