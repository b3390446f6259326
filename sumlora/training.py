"""QLoRA training with transformers' Trainer and peft, logged with dvclive, resumable.

Checkpoints live in a persistent directory. Each complete checkpoint gets a marker file
once the Trainer has finished writing it. A checkpoint is resumed only to finish an
interrupted run: the same run by fingerprint (params, tokenized data, base weights, code,
library versions, process count) that has not finished. A finished run is never resumed,
so a rerun (forced, or because anything it depends on changed) trains every step again.
A checkpoint that was being written when the process died has no marker and is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch

from sumlora import atomic
from sumlora.cli import peak_rss_mb
from sumlora.modeling import (base_identity, load_model_and_tokenizer, lora_config, sha256_file,
                              write_adapter_info)
from sumlora.params import Params
from sumlora.plots import loss_curves
from sumlora.prompt import PromptTemplate
from sumlora.tokenizing import IGNORE_INDEX


class PadCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with -100; builds the attention mask.

    Unlike DataCollatorForLanguageModeling it never masks by token id, so EOS (== pad for
    many tokenizers) stays in the loss.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            attention[i, :k] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        if all("row" in f for f in features):  # training rows carry their row number (for the statistics)
            batch["row"] = torch.tensor([f["row"] for f in features], dtype=torch.long)
        return batch


def summary_loss(model, inputs: dict, num_items_in_batch=None):
    """Next-token cross-entropy on the label tokens only, computing the LM head only where it is needed.

    The usual forward projects every position onto the vocabulary (B x T x V logits, 49k wide
    for SmolLM2) although only the summary positions carry labels. Here ``logits_to_keep`` (a
    B x T boolean mask) keeps just the positions whose next token is a label, so the head's
    compute and its logits memory shrink to the summary tokens. Same value as the model's own
    loss: summed over label tokens, divided by their count (``num_items_in_batch``, the count over
    the accumulated batches and processes when the Trainer supplies it).
    """
    labels, mask = inputs["labels"], inputs["attention_mask"]
    targets = labels[:, 1:]
    keep = torch.nn.functional.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # position t predicts t+1
    # Right padding (PadCollator's): with causal attention no real token sees a later pad, so the
    # padding mask changes nothing that is scored; without it attention runs as plain causal SDPA
    # (the fused kernel) instead of materialising a masked score matrix.
    right_padded = bool((mask[:, :-1] >= mask[:, 1:]).all()) and bool(mask[:, 0].all())
    outputs = model(input_ids=inputs["input_ids"], attention_mask=None if right_padded else mask,
                    logits_to_keep=keep, use_cache=False)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])  # (label tokens, V), row-major order
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / count, outputs


def trainer_class():
    from transformers import Trainer

    class SummaryLossTrainer(Trainer):
        """A Trainer whose loss is :func:`summary_loss`."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True  # our loss divides by num_items_in_batch itself
            self.rows_trained: list[int] = []  # training rows this process computed a loss on, in order
            self.tokens_trained = self.padding_trained = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "row" in inputs:
                self.rows_trained += inputs["row"].tolist()
                real = int(inputs["attention_mask"].sum())
                self.tokens_trained += real
                self.padding_trained += inputs["attention_mask"].numel() - real
            loss, outputs = summary_loss(model, inputs, num_items_in_batch)
            if (self.args.average_tokens_across_devices and num_items_in_batch is not None
                    and self.accelerator.num_processes > 1):
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
            return (loss, outputs) if return_outputs else loss

    return SummaryLossTrainer


COMPLETE = ".complete"  # written into checkpoint-N once the Trainer has finished saving it
RUN_FILE = "run.json"  # the fingerprint of the run the checkpoints belong to


def _callbacks(live):
    from transformers import TrainerCallback

    names = {"loss": "train/loss", "eval_loss": "eval/loss", "learning_rate": "train/learning_rate",
             "grad_norm": "train/grad_norm"}

    def log(step: int, logs: dict) -> None:
        live.step = step
        for key, name in names.items():
            if key in logs:
                live.log_metric(name, float(logs[key]))

    class LiveCallback(TrainerCallback):
        """Logs loss curves to dvclive with the optimizer step as the x axis."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.log_history:  # resumed: replay the curve so far
                for h in state.log_history:
                    log(h["step"], h)
                live.make_summary()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log(state.global_step, logs)
                live.make_summary()

    class MarkComplete(TrainerCallback):
        """Marks checkpoint-N complete after the Trainer has written all of it."""

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                atomic.write_text(ckpt / COMPLETE, f"{state.global_step}\n")

    return [LiveCallback(), MarkComplete()]


def code_files() -> list[Path]:
    """This project's source files loaded in this process (the stage script and the sumlora modules it
    imports): the code of the train stage's dependencies, as dvc.yaml lists them."""
    import sys

    root = Path(__file__).resolve().parents[1]
    files = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.endswith(".py"):
            f = Path(f).resolve()
            if f.parent in (root / "sumlora", root / "stages"):
                files.add(f)
    return sorted(files)


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_fingerprint(params: Params, tokenized_dir, base_sha256: str, processes: int) -> str:
    """Identifies a training run by everything that shapes it: the params, the tokenized data, the base
    model's weights (:func:`base_identity`), the code of the stage and the library versions, and the
    number of processes (which sets the batch each step sees)."""
    h = hashlib.sha256()
    shaping = {k: dataclasses.asdict(getattr(params, k)) for k in ("model", "lora", "train")}
    h.update(json.dumps({"seed": params.seed, **shaping, "processes": processes,
                         "libraries": _library_versions(), "base_sha256": base_sha256}, sort_keys=True).encode())
    for f in sorted(Path(tokenized_dir).glob("*.jsonl")):
        h.update(f"data/{f.name}:{sha256_file(f)}\n".encode())
    root = Path(__file__).resolve().parents[1]
    for f in code_files():
        h.update(f"code/{f.relative_to(root).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _step(ckpt: Path) -> int:
    suffix = ckpt.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _clear(d: Path) -> None:
    """Empty ``d`` but keep the directory itself (it may be a mount point or a symlink to another disk)."""
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def resumable_checkpoint(checkpoints_dir, fingerprint: str, max_steps: int) -> Path | None:
    """The last complete checkpoint of this run if the run is unfinished, else None.

    A checkpoint is resumed only to finish an interrupted run: checkpoints of another run (other
    fingerprint) and of a run that finished (its adapter was published, or it reached ``max_steps``)
    are cleared, so a rerun trains every step again.
    """
    d = Path(checkpoints_dir)
    run_file = d / RUN_FILE
    if d.exists():
        old = json.loads(run_file.read_text()) if run_file.is_file() else {}
        finished = old.get("finished") or any(_step(c) >= max_steps and (c / COMPLETE).is_file()
                                              for c in d.glob("checkpoint-*"))
        if old.get("fingerprint") != fingerprint or finished:
            if any(d.glob("checkpoint-*")):
                why = ("the run they belong to finished" if old.get("fingerprint") == fingerprint else
                       "they belong to a run with other params, data, base weights, code or process count")
                print(f"{d}: {why}: starting fresh")
            _clear(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_file, {"fingerprint": fingerprint, "finished": False})
    complete = []
    for ckpt in sorted(d.glob("checkpoint-*"), key=_step):
        if (ckpt / COMPLETE).is_file():
            complete.append(ckpt)
        else:
            print(f"{ckpt}: incomplete (the process died while writing it): removed")
            shutil.rmtree(ckpt)
    return complete[-1] if complete else None


def last_complete_checkpoint(checkpoints_dir) -> Path | None:
    """The complete checkpoint a rerun of the same run would resume from (None if there is none)."""
    d = Path(checkpoints_dir)
    complete = [c for c in d.glob("checkpoint-*") if (c / COMPLETE).is_file()] if d.is_dir() else []
    return max(complete, key=_step) if complete else None


def mark_finished(checkpoints_dir, fingerprint: str) -> None:
    """Record that the run finished and its adapter was published: its checkpoints are never resumed."""
    atomic.write_json(Path(checkpoints_dir) / RUN_FILE, {"fingerprint": fingerprint, "finished": True})


def weight_count(p) -> int:
    """Parameters held by a tensor; bitsandbytes packs two 4-bit weights into each uint8 element."""
    return p.numel() * 2 if type(p).__name__ == "Params4bit" else p.numel()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights counted as the weights they stand for."""
    trainable = sum(weight_count(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(weight_count(p) for p in model.parameters())


def prepare_qlora_model(base_dir, params: Params):
    """Base model (4-bit when configured) prepared for k-bit training, with fresh LoRA layers."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model, tok = load_model_and_tokenizer(base_dir, params.model)
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    gc = params.train.gradient_checkpointing
    gc_kwargs = {"use_reentrant": False}  # reentrant checkpointing breaks DDP and LoRA-only grads
    if params.model.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    torch.manual_seed(params.seed)  # LoRA init
    model = get_peft_model(model, lora_config(params.lora, model.config.model_type))
    return model, tok


def length_grouped_order(lengths: list[int], batch_rows: int, rows_needed: int, seed: int,
                         window_batches: int = 16) -> list[int]:
    """The order in which training rows are fed, ``rows_needed`` long (epochs back to back).

    Each epoch is a fresh seeded shuffle, cut into windows of ``window_batches`` batches; each
    window is sorted by length and cut into batches, so a batch holds rows of similar length
    (little padding) while every batch still comes from a random part of the data; the
    batches of an epoch are then shuffled. Deterministic for a seed, so a resumed run skips
    exactly the batches it already trained on.
    """
    rng = random.Random(seed)
    n, order = len(lengths), []
    while len(order) < rows_needed:
        perm = list(range(n))
        rng.shuffle(perm)
        batches = []
        for w in range(0, n, window_batches * batch_rows):
            window = sorted(perm[w:w + window_batches * batch_rows], key=lambda i: (lengths[i], i))
            batches += [window[j:j + batch_rows] for j in range(0, len(window), batch_rows)]
        rng.shuffle(batches)
        order += [i for b in batches for i in b]
    return order[:rows_needed]


def grouped_by_length(train_ds, params: Params, processes: int = 1):
    """``train_ds`` in :func:`length_grouped_order` for the whole run (unchanged if train.group_by_length is off)."""
    tp = params.train
    if not tp.group_by_length:
        return train_ds
    rows_needed = tp.max_steps * tp.batch_size * tp.gradient_accumulation_steps * processes
    return train_ds.select(length_grouped_order([len(x) for x in train_ds["input_ids"]], tp.batch_size,
                                                rows_needed, params.seed))


def _load_split(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no training rows (all dropped as over-length?)")
    return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"], "row": i}
                              for i, r in enumerate(rows)])


def training_arguments(params: Params, output_dir, **overrides):
    """The TrainingArguments of the train stage (``overrides`` replace single fields, for benchmarks)."""
    from transformers import TrainingArguments

    tp = params.train
    cuda = torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(output_dir), max_steps=tp.max_steps, learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler, warmup_steps=tp.warmup_steps, weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm, per_device_train_batch_size=tp.batch_size,
        per_device_eval_batch_size=tp.batch_size, gradient_accumulation_steps=tp.gradient_accumulation_steps,
        # group_by_length: the dataset comes in length_grouped_order already, so read it in sequence
        optim=tp.optim, train_sampling_strategy="sequential" if tp.group_by_length else "random",
        eval_strategy="steps", eval_steps=tp.eval_steps, save_strategy="steps", save_steps=tp.save_steps,
        save_total_limit=2,
        logging_steps=tp.logging_steps, seed=params.seed, data_seed=params.seed, report_to="none",
        activation_checkpointing=tp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tp.gradient_checkpointing else None,
        remove_unused_columns=False, label_names=["labels"], include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda, bf16=cuda and params.model.compute_dtype == "bfloat16",
        fp16=cuda and params.model.compute_dtype == "float16", dataloader_num_workers=0,
        disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train(params: Params, tokenized_dir, base_dir, adapter_dir, checkpoints_dir, live_dir,
          template: PromptTemplate) -> dict:
    """Train a LoRA adapter; write it (with tokenizer and template) atomically to ``adapter_dir``, and the
    loss curves, loss.png and timing.json atomically to ``live_dir``. Returns (metrics, timing)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from dvclive import Live
    from transformers import set_seed

    tp = params.train
    set_seed(params.seed)
    tokenized_dir = Path(tokenized_dir)
    train_ds = _load_split(tokenized_dir / "train.jsonl")
    eval_ds = _load_split(tokenized_dir / "validation.jsonl").remove_columns("row")
    if tp.max_eval_samples is not None and len(eval_ds) > tp.max_eval_samples:
        eval_ds = eval_ds.select(range(tp.max_eval_samples))

    model, tok = prepare_qlora_model(base_dir, params)
    trainable, total = trainable_parameters(model)
    cuda = torch.cuda.is_available()
    # One process per device under `accelerate launch` / torchrun (data-parallel); else just one.
    state = PartialState(cpu=not cuda)
    train_ds = grouped_by_length(train_ds, params, state.num_processes)
    main = state.is_main_process
    base_sha256 = base_identity(base_dir)
    fingerprint = run_fingerprint(params, tokenized_dir, base_sha256, state.num_processes)
    with state.main_process_first():  # the main process clears stale checkpoints before the others look
        resume = resumable_checkpoint(checkpoints_dir, fingerprint, tp.max_steps)
    if main:
        print(f"resuming from {resume}" if resume else "training from scratch"
              + (f" on {state.num_processes} processes ({state.backend})" if state.num_processes > 1 else ""))
    args = training_arguments(params, checkpoints_dir)
    # The curves are written beside live_dir and moved into place whole at the end, so a killed run
    # leaves the previous complete live_dir (a resumed run replays its curve so far into a fresh one).
    live_dir = Path(live_dir)
    partial = live_dir.with_name(f".{live_dir.name}.partial")
    if main:
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
    live = Live(str(partial), dvcyaml=False, save_dvc_exp=False, report=None) if main else None
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               data_collator=PadCollator(tok.pad_token_id), callbacks=_callbacks(live))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - start
    train_rows, train_tokens, train_padding = trainer.rows_trained, trainer.tokens_trained, trainer.padding_trained
    final_eval = trainer.evaluate()  # every process takes part; only the main one writes below
    per_process = gather_object([{"rows": train_rows, "tokens": train_tokens, "padding": train_padding}])
    if not main:
        _end_processes(state)  # after the main process has published the adapter
        return None, None
    live.end()
    loss_curves(trainer.state.log_history, partial / "loss.png")

    with atomic.output_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        template.save(tmp)
        write_adapter_info(tmp, base_dir, base_sha256)
    mark_finished(checkpoints_dir, fingerprint)
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = {
        "steps": int(trainer.state.global_step),
        "train_loss_last": round(float(train_losses[-1]), 4) if train_losses else None,
        "eval_loss": round(float(final_eval["eval_loss"]), 4),
        "train_tokens": tokens,
        "train_rows": len(train_ds),
        "eval_rows": len(eval_ds),
        "trainable_params": int(trainable),
        "total_params": int(total),
    }
    timing = {"runtime_s": round(runtime, 1), "resumed_from": resume.name if resume else None,
              "device": "cuda" if cuda else "cpu",
              "steps_this_run": int(trainer.state.global_step) - (_step(resume) if resume else 0),
              "processes": state.num_processes,
              "rows_per_process": [len(p["rows"]) for p in per_process],
              "rows_seen_by_several_processes": len(set.intersection(*[set(p["rows"]) for p in per_process]))
              if len(per_process) > 1 else 0,
              "padding_fraction": round(sum(p["padding"] for p in per_process)
                                        / max(1, sum(p["padding"] + p["tokens"] for p in per_process)), 4),
              "real_tokens_per_s": round(sum(p["tokens"] for p in per_process) / runtime, 1),
              "peak_rss_mb": peak_rss_mb()}
    atomic.write_json(partial / "timing.json", timing)
    atomic.replace_dir(partial, live_dir)
    _end_processes(state)
    return metrics, timing


def _end_processes(state) -> None:
    """Several processes: wait for each other, then close the process group, so that none exits while
    another still uses it (an exit mid-collective can abort the process)."""
    if state.num_processes > 1:
        state.wait_for_everyone()
        torch.distributed.destroy_process_group()
