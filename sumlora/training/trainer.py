"""The trainer: the loss on summary tokens only, the Trainer subclass, its arguments and callbacks."""

from __future__ import annotations

import contextlib

import torch

from sumlora.core.params import TrainParams
from sumlora.progress import Progress
from sumlora.tokenizing import IGNORE_INDEX
from sumlora.training.batching import split_rows
from sumlora.training.checkpoints import KEEP, mark_complete


def summary_loss(model, inputs: dict, num_items_in_batch=None, per_row: bool = False):
    """Next-token cross-entropy on the label tokens only, computing the LM head only where it is needed.

    The usual forward projects every position onto the vocabulary (B x T x V logits, 49k wide
    for SmolLM2) although only the summary positions carry labels. Here ``logits_to_keep`` (a
    B x T boolean mask) keeps just the positions whose next token is a label, so the head's
    compute and its logits memory shrink to the summary tokens. Same value as the model's own
    loss: summed over label tokens, divided by their count (``num_items_in_batch``, the count over
    the accumulated batches and processes when the Trainer supplies it).
    ``per_row``: the mean over rows of each row's mean loss per label token instead (the validation loss: the
    Trainer averages batches weighted by their row count, so this one does not depend on the batch size).
    """
    labels, mask = inputs["labels"], inputs["attention_mask"]
    targets = labels[:, 1:]
    keep = torch.nn.functional.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # position t predicts t+1
    # Right padding (PadCollator's): with causal attention no real token sees a later pad, so the
    # padding mask changes nothing that is scored; without it attention runs as plain causal attention
    # instead of building a padding mask.
    right_padded = bool((mask[:, :-1] >= mask[:, 1:]).all()) and bool(mask[:, 0].all())
    outputs = model(input_ids=inputs["input_ids"], attention_mask=None if right_padded else mask,
                    logits_to_keep=keep, use_cache=False)
    logits = outputs.logits  # (label tokens, V), row-major order
    logits = logits.reshape(-1, logits.shape[-1])
    if per_row:
        token_loss = torch.nn.functional.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX],
                                                       reduction="none")
        rows = keep.nonzero()[:, 0]  # the row of each label token, in the logits' row-major order
        n = keep.sum(dim=1)
        sums = torch.zeros(len(n), device=token_loss.device).index_add_(0, rows, token_loss)
        return (sums[n > 0] / n[n > 0]).mean(), outputs
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / count, outputs


def diverged(step: int, max_steps: int, value: float, learning_rate: float, which: str):
    """The error that stops a run whose loss is not finite (NaN or infinity): nothing is published."""
    from sumlora.core.errors import ModelError

    return ModelError(f"training diverged at step {step} of {max_steps}: the {which} loss is {value}; nothing was "
                      f"published. The usual cause is train.learning_rate ({learning_rate:g}) too high for this "
                      "model: lower it (or set train.max_grad_norm > 0 if it is 0)")


def trainer_class():
    from transformers import Trainer

    class SummaryLossTrainer(Trainer):
        """A Trainer whose loss is :func:`summary_loss`."""

        def __init__(self, *args, max_tokens_per_pass: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.max_tokens_per_pass = max_tokens_per_pass  # train.max_tokens_per_pass: see training_step
            self.model_accepts_loss_kwargs = True  # our loss divides by num_items_in_batch itself
            self.rows_trained: list[int] = []  # training rows this process computed a loss on, in order
            self.tokens_trained = self.padding_trained = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and "row" in inputs:
                self.rows_trained += inputs["row"].tolist()
                real = int(inputs["attention_mask"].sum())
                self.tokens_trained += real
                self.padding_trained += inputs["attention_mask"].numel() - real
            loss, outputs = summary_loss(model, inputs, num_items_in_batch, per_row=not model.training)
            if not torch.isfinite(loss.detach()).all():
                raise diverged(self.state.global_step + 1, self.state.max_steps, float(loss.detach()),
                               self.args.learning_rate, "training" if model.training else "validation")
            if (model.training and self.args.average_tokens_across_devices and num_items_in_batch is not None
                    and self.accelerator.num_processes > 1):
                # DDP averages gradients over processes, and num_items_in_batch counts all of theirs. Not in
                # evaluation: its loss is per row, and the processes' losses are gathered, not averaged.
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            """A batch wider than ``train.max_tokens_per_pass`` tokens runs as several passes of fewer rows
            (:func:`split_rows`): each pass's loss is its label tokens' sum over the whole batch's count
            (``num_items_in_batch``), so their gradients add up to the batch's, while a pass holds only its own
            activations. Under DDP only the last pass synchronizes the gradients, so every process synchronizes
            once per batch however its batch was split."""
            passes = split_rows(inputs, self.max_tokens_per_pass)
            if len(passes) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            assert num_items_in_batch is not None  # the Trainer counts it, as model_accepts_loss_kwargs asks
            total = 0.0
            for k, part in enumerate(passes):
                last = k == len(passes) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    total = total + super().training_step(model, part, num_items_in_batch)
            return total

        def evaluate(self, *args, **kwargs):
            """A validation pass leaves training's random numbers as it found them (a DataLoader draws its seed
            from torch's generator): how often training evaluates changes no dropout mask, so no result.
            Compiled blocks (``train.compile_blocks``) run uncompiled here: a forward-only pass would be another
            graph to compile, for a few dozen rows."""
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices), torch.compiler.set_stance("force_eager"):
                return super().evaluate(*args, **kwargs)

    return SummaryLossTrainer


def callbacks(live, early_stopping_patience: int | None = None):
    """The run's callbacks: dvclive loss curves (main process; ``live`` is None elsewhere), progress, checkpoint
    completion markers, and early stopping when ``early_stopping_patience`` is set. Not dvclive's own
    DVCLiveCallback: the curves go to a fresh directory that replaces the old one whole at the end, so a resumed
    run must replay its log history so far into it (below)."""
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

    class ShowProgress(TrainerCallback):
        """Steps and time left, with the training loss at each logging step: a bar on a terminal, else a line."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = Progress(state.max_steps, "step", every=None, start=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar.update(state.global_step - self.bar.done)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                shown = {k.replace("eval_loss", "validation loss"): f"{float(logs[k]):.4f}"
                         for k in ("loss", "eval_loss") if k in logs}
                if shown:
                    self.bar.report(**shown)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar.close()

    class MarkComplete(TrainerCallback):
        """Marks checkpoint-N complete after the Trainer has written all of it."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                mark_complete(args.output_dir, state.global_step)

    if early_stopping_patience is None:
        return [LiveCallback(), ShowProgress(), MarkComplete()]
    from transformers import EarlyStoppingCallback

    return [LiveCallback(), ShowProgress(), MarkComplete(),
            EarlyStoppingCallback(early_stopping_patience=early_stopping_patience)]


def training_arguments(tp: TrainParams, seed: int, compute_dtype: str, output_dir):
    """The TrainingArguments of the train stage."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    kwargs = dict(
        output_dir=str(output_dir), max_steps=tp.max_steps, learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler, warmup_steps=tp.warmup_steps, weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm, per_device_train_batch_size=tp.batch_size,
        per_device_eval_batch_size=tp.eval_batch_size, gradient_accumulation_steps=tp.gradient_accumulation_steps,
        # group_by_length: the dataset comes in length_grouped_order already, so read it in sequence
        optim=tp.optim, train_sampling_strategy="sequential" if tp.group_by_length else "random",
        eval_strategy="steps", eval_steps=tp.eval_steps, save_strategy="steps", save_steps=tp.save_steps,
        save_total_limit=KEEP,  # with select: best, the Trainer also keeps the best checkpoint
        load_best_model_at_end=tp.select == "best", metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=tp.logging_steps, seed=seed, data_seed=seed, report_to="none",
        activation_checkpointing=tp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tp.gradient_checkpointing else None,
        remove_unused_columns=False, label_names=["labels"], include_num_input_tokens_seen="non_padding",
        # bfloat16: autocast (on CPU too), which a base de-quantized to bfloat16 needs; 4-bit layers cast themselves
        use_cpu=not cuda, bf16=compute_dtype == "bfloat16",
        fp16=cuda and compute_dtype == "float16", dataloader_num_workers=0,
        neftune_noise_alpha=tp.neftune_noise_alpha,  # NEFTune: uniform noise on the input embeddings in training
        disable_tqdm=True)
    return TrainingArguments(**kwargs)
