"""QLoRA training with transformers' Trainer and peft, logged with dvclive, resumable.

Checkpoints live in a persistent directory. Each complete checkpoint gets a marker file
once the Trainer has finished writing it; a rerun resumes from the last complete checkpoint
of the same run (same params, data and base model, by fingerprint) and starts fresh otherwise.
A checkpoint that was being written when the process died has no marker and is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from sumlora import atomic
from sumlora.modeling import ADAPTER_INFO, load_model_and_tokenizer, lora_config, read_base_info
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
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_fingerprint(params: Params, tokenized_dir, base_dir) -> str:
    """Identifies a training run: the params that shape it, the training data and the base model."""
    h = hashlib.sha256()
    shaping = {k: dataclasses.asdict(getattr(params, k)) for k in ("model", "lora", "train")}
    h.update(json.dumps({"seed": params.seed, **shaping}, sort_keys=True).encode())
    for f in sorted(Path(tokenized_dir).glob("*.jsonl")):
        h.update(f"{f.name}:{_sha256(f)}".encode())
    h.update(json.dumps(read_base_info(base_dir), sort_keys=True).encode())
    return h.hexdigest()


def _step(ckpt: Path) -> int:
    suffix = ckpt.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def resumable_checkpoint(checkpoints_dir, fingerprint: str) -> Path | None:
    """The last complete checkpoint of this run, or None. Clears checkpoints of another run."""
    d = Path(checkpoints_dir)
    run_file = d / RUN_FILE
    if d.exists():
        old = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
        if old != fingerprint:
            if any(d.glob("checkpoint-*")):
                print(f"{d}: checkpoints belong to a run with other params, data or base model: starting fresh")
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_file, {"fingerprint": fingerprint})
    complete = []
    for ckpt in sorted(d.glob("checkpoint-*"), key=_step):
        if (ckpt / COMPLETE).is_file():
            complete.append(ckpt)
        else:
            print(f"{ckpt}: incomplete (the process died while writing it): removed")
            shutil.rmtree(ckpt)
    return complete[-1] if complete else None


def _numel(p) -> int:
    """Parameters held by a tensor; bitsandbytes packs two 4-bit weights into each uint8 element."""
    return p.numel() * 2 if type(p).__name__ == "Params4bit" else p.numel()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights counted as the weights they stand for."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_numel(p) for p in model.parameters())


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


def _load_split(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no training rows (all dropped as over-length?)")
    return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def train(params: Params, tokenized_dir, base_dir, adapter_dir, checkpoints_dir, live_dir,
          template: PromptTemplate) -> dict:
    """Train a LoRA adapter; write it (with tokenizer and template) atomically to ``adapter_dir``."""
    from dvclive import Live
    from transformers import Trainer, TrainingArguments, set_seed

    tp = params.train
    set_seed(params.seed)
    tokenized_dir = Path(tokenized_dir)
    train_ds = _load_split(tokenized_dir / "train.jsonl")
    eval_ds = _load_split(tokenized_dir / "validation.jsonl")
    if tp.max_eval_samples is not None and len(eval_ds) > tp.max_eval_samples:
        eval_ds = eval_ds.select(range(tp.max_eval_samples))

    model, tok = prepare_qlora_model(base_dir, params)
    trainable, total = trainable_parameters(model)
    cuda = torch.cuda.is_available()
    resume = resumable_checkpoint(checkpoints_dir, run_fingerprint(params, tokenized_dir, base_dir))
    print(f"resuming from {resume}" if resume else "training from scratch")
    args = TrainingArguments(
        output_dir=str(checkpoints_dir), max_steps=tp.max_steps, learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler, warmup_steps=tp.warmup_steps, weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm, per_device_train_batch_size=tp.batch_size,
        per_device_eval_batch_size=tp.batch_size, gradient_accumulation_steps=tp.gradient_accumulation_steps,
        optim=tp.optim, train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        eval_strategy="steps", eval_steps=tp.eval_steps, save_strategy="steps", save_steps=tp.save_steps,
        save_total_limit=2,
        logging_steps=tp.logging_steps, seed=params.seed, data_seed=params.seed, report_to="none",
        activation_checkpointing=tp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tp.gradient_checkpointing else None,
        remove_unused_columns=False, label_names=["labels"], include_num_input_tokens_seen="non_padding",
        use_cpu=not cuda, bf16=cuda and params.model.compute_dtype == "bfloat16",
        fp16=cuda and params.model.compute_dtype == "float16", dataloader_num_workers=0,
        disable_tqdm=True)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=PadCollator(tok.pad_token_id), callbacks=_callbacks(live))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.perf_counter() - start
    final_eval = trainer.evaluate()
    live.end()
    loss_curves(trainer.state.log_history, Path(live_dir) / "loss.png")

    with atomic.output_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        template.save(tmp)
        atomic.write_json(Path(tmp) / ADAPTER_INFO, {"base_model": read_base_info(base_dir)})
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
              "steps_this_run": int(trainer.state.global_step) - (_step(resume) if resume else 0)}
    return metrics, timing
