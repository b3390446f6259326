"""The params schema: one dataclass per section of params.yaml, with its range checks.

``load_params()`` validates the whole file and reports every problem at once, each with its
key path (``lora.r: must be >= 1, got 0``); unknown keys are rejected (a typo such as
``lora.rank`` would otherwise be ignored). The generic machinery is :mod:`sumlora.core.validate`.

params.yaml is the source of every value: each key must be set there. The dataclass defaults
are the same values (tests/test_params.py checks they equal the file) and are used only where
no params file exists (``summarize``/``merge`` run outside the repository).

Over 200 lines on purpose: one dataclass per params.yaml section, each beside its checks, so the
whole schema reads top to bottom in the order of the file it validates.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sumlora.core.errors import ParamsError
from sumlora.core.validate import build, read_yaml

DTYPES = ("float32", "bfloat16", "float16")
DEQUANTIZE = ("auto", "none", "float32", "bfloat16")
PROMPT_STYLES = ("instruct", "chat")
SELECT = ("last", "best")
ATTENTION = ("auto", "matmul", "sdpa", "eager")  # train.attention choices (sumlora.lora.attention_kernel)
SPLITS = ("test", "validation")

@dataclass
class ModelParams:
    name: str = "embedded"
    revision: str | None = None
    trust_remote_code: bool = False
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if not self.name.strip():
            errs.append(("name", "must not be empty"))
        if self.revision is not None and not self.revision.strip():
            errs.append(("revision", "must be a branch, tag or commit of the hub model, or null"))
        elif self.revision is not None and (self.name == "embedded" or Path(self.name).exists()):
            kind = "the embedded model" if self.name == "embedded" else "a local directory"
            errs.append(("revision", f"pins a Hugging Face hub id, but model.name {self.name!r} is {kind}; "
                         f"set it to null (got {self.revision!r})"))
        if self.quant_type not in ("nf4", "fp4"):
            errs.append(("quant_type", f"must be 'nf4' or 'fp4', got {self.quant_type!r}"))
        if self.compute_dtype not in ("auto",) + DTYPES:
            errs.append(("compute_dtype", f"must be 'auto' or one of {DTYPES}, got {self.compute_dtype!r}"))
        return errs


@dataclass
class FormatParams:
    max_train_rows: int | None = None
    max_validation_rows: int | None = None
    prompt: str = "instruct"

    def check(self):
        errs = [(k, f"must be >= 1 or null, got {getattr(self, k)}") for k in ("max_train_rows", "max_validation_rows")
                if getattr(self, k) is not None and getattr(self, k) < 1]
        if self.prompt not in PROMPT_STYLES:
            errs.append(("prompt", f"must be one of {PROMPT_STYLES}, got {self.prompt!r}"))
        return errs


@dataclass
class TokenizeParams:
    max_length: int | None = 1024
    train_on_prompt: bool = False

    def check(self):
        if self.max_length is not None and self.max_length < 8:
            return [("max_length", f"must be >= 8 or null, got {self.max_length}")]
        return []


@dataclass
class LoraParams:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def check(self):
        errs = []
        if self.r < 1:
            errs.append(("r", f"must be >= 1, got {self.r}"))
        if self.alpha <= 0:
            errs.append(("alpha", f"must be > 0, got {self.alpha}"))
        if not 0 <= self.dropout < 1:
            errs.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if self.target_modules is not None and not self.target_modules:
            errs.append(("target_modules", "must be a non-empty list or null (architecture default)"))
        return errs


OPTIMIZERS = ("paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit", "adamw_torch")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class TrainParams:
    max_steps: int = 100
    learning_rate: float = 8.0e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 2
    gradient_accumulation_steps: int = 2
    gradient_checkpointing: bool = False
    max_tokens_per_pass: int | None = 1024
    optim: str = "paged_adamw_8bit"
    group_by_length: bool = True
    eval_steps: int = 100
    save_steps: int = 50
    eval_batch_size: int = 2
    max_eval_samples: int | None = 40
    select: str = "last"
    early_stopping_patience: int | None = None
    logging_steps: int = 5
    dequantize_base: str | bool = "auto"
    attention: str = "auto"
    compile_blocks: bool = False
    neftune_noise_alpha: float | None = None

    def check(self):
        errs = []
        for k in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                  "eval_batch_size", "logging_steps"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.learning_rate <= 0:
            errs.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        for k in ("warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, k) < 0:
                errs.append((k, f"must be >= 0, got {getattr(self, k)}"))
        if self.max_tokens_per_pass is not None and self.max_tokens_per_pass < 1:
            errs.append(("max_tokens_per_pass", f"must be >= 1 or null, got {self.max_tokens_per_pass}"))
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            errs.append(("max_eval_samples", f"must be >= 1 or null, got {self.max_eval_samples}"))
        if self.select not in SELECT:
            errs.append(("select", f"must be one of {SELECT}, got {self.select!r}"))
        elif self.select == "best" and self.save_steps % self.eval_steps:
            errs.append(("save_steps", f"must be a multiple of train.eval_steps ({self.eval_steps}) with "
                         "train.select: best (a checkpoint is kept only where the validation loss was measured), "
                         f"got {self.save_steps}"))
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                errs.append(("early_stopping_patience",
                             f"must be >= 1 or null (off), got {self.early_stopping_patience}"))
            elif self.select != "best":
                errs.append(("early_stopping_patience", "needs train.select: best (stopping early, then keeping the "
                             f"last checkpoint, keeps one that was already worse); got select {self.select!r}"))
        if self.optim not in OPTIMIZERS:
            errs.append(("optim", f"must be one of {OPTIMIZERS}, got {self.optim!r}"))
        if self.lr_scheduler not in SCHEDULERS:
            errs.append(("lr_scheduler", f"must be one of {SCHEDULERS}, got {self.lr_scheduler!r}"))
        if self.neftune_noise_alpha is not None and self.neftune_noise_alpha <= 0:
            errs.append(("neftune_noise_alpha", f"must be > 0 or null (off), got {self.neftune_noise_alpha}"))
        if self.attention not in ATTENTION:
            errs.append(("attention", f"must be one of {ATTENTION}, got {self.attention!r}"))
        if self.dequantize_base not in ("auto", True, False):
            errs.append(("dequantize_base", f"must be auto, true or false, got {self.dequantize_base!r}"))
        for k in ("eval_steps", "save_steps", "warmup_steps"):
            if getattr(self, k) > self.max_steps:
                errs.append((k, f"must be <= train.max_steps ({self.max_steps}), got {getattr(self, k)}"))
        return errs


@dataclass
class GenerateParams:
    split: str = "test"
    num_dialogues: int | None = 100
    max_new_tokens: int = 80
    batch_size: int = 8
    dequantize: str = "auto"
    num_beams: int = 1
    length_penalty: float = 1.0

    def check(self):
        errs = [(k, f"must be >= 1, got {getattr(self, k)}") for k in ("max_new_tokens", "batch_size", "num_beams")
                if getattr(self, k) < 1]
        if self.num_beams == 1 and self.length_penalty != 1.0:  # it only ranks finished beams: refused, not ignored
            errs.append(("length_penalty", f"has no effect with num_beams: 1 (greedy), got {self.length_penalty}; "
                                           "set num_beams > 1 or length_penalty: 1.0"))
        if self.split not in SPLITS:
            errs.append(("split", f"must be one of {SPLITS}, got {self.split!r}"))
        if self.dequantize not in DEQUANTIZE:
            errs.append(("dequantize", f"must be one of {DEQUANTIZE}, got {self.dequantize!r}"))
        if self.num_dialogues is not None and self.num_dialogues < 1:
            errs.append(("num_dialogues", f"must be >= 1 or null (all), got {self.num_dialogues}"))
        return errs


@dataclass
class EvaluateParams:
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    report_examples: int = 5

    def check(self):
        errs = []
        if self.bootstrap_samples < 100:
            errs.append(("bootstrap_samples", f"must be >= 100, got {self.bootstrap_samples}"))
        if not 0.5 <= self.confidence < 1:
            errs.append(("confidence", f"must be in [0.5, 1), got {self.confidence}"))
        if self.report_examples < 0:
            errs.append(("report_examples", f"must be >= 0, got {self.report_examples}"))
        return errs


@dataclass
class ReleaseParams:
    license: str = "cc-by-nc-sa-4.0"
    merged_model: bool = True

    def check(self):
        errs = []
        if not self.license.strip():
            errs.append(("license", "must be a license id of the Hugging Face hub (e.g. cc-by-nc-sa-4.0)"))
        return errs


@dataclass
class Params:
    seed: int = 42
    model: ModelParams = field(default_factory=ModelParams)
    format: FormatParams = field(default_factory=FormatParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    lora: LoraParams = field(default_factory=LoraParams)
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    release: ReleaseParams = field(default_factory=ReleaseParams)

    def check(self):
        errs = []
        if self.seed < 0:
            errs.append(("seed", f"must be >= 0, got {self.seed}"))
        return errs


def cross_checks(p: Params) -> list[str]:
    """Problems that involve several sections or the machine."""
    from sumlora.core.device import compute_dtype_problem

    errs = []
    if problem := compute_dtype_problem(p.model.compute_dtype, p.model.load_in_4bit):
        errs.append(problem)
    if p.train.optim.endswith("8bit") and not _has_bitsandbytes():
        errs.append(f"train.optim: {p.train.optim} needs bitsandbytes, which is not installed")
    if p.model.load_in_4bit and not _has_bitsandbytes():
        errs.append("model.load_in_4bit: needs bitsandbytes, which is not installed")
    return errs


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


Check = Callable[[Params], list[str]]


def parse_params(data, source: str = "params.yaml", extra_checks: Iterable[Check] = ()) -> Params:
    """Validate parsed YAML; ``extra_checks`` (e.g. the prompt template's) add problems to the same report."""
    errors: list[str] = []
    params = build(Params, data, "", errors)
    if not errors:
        errors.extend(cross_checks(params))
        for check in extra_checks:
            errors.extend(check(params))
    if errors:
        raise ParamsError(f"{source}: {len(errors)} problem(s):\n" + "\n".join(f"  - {e}" for e in errors))
    return params


def flatten(obj, prefix: str = "") -> dict:
    """``{"lora.r": 16, ...}`` from a params object or nested mapping."""
    out = {}
    for k, v in (obj.items() if isinstance(obj, dict) else dataclasses.asdict(obj).items()):
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


IGNORED_FOR_SEEDS = ("seed",)  # rows differing only in these are the same configuration
NOT_CONFIG = ("release.",)  # params that change no score
# how often training logs, evaluates and saves: no score changes unless an evaluation picks the adapter or stops
# training (tests/test_selection.py trains with each and compares)
BOOKKEEPING = ("train.logging_steps", "train.eval_steps", "train.save_steps")


def config_key(params: dict) -> str:
    """The configuration a run of flattened ``params`` ran: its params but the seed and those that change no score
    (the release's; how often training evaluates and saves, where no evaluation picks the adapter), as canonical
    JSON. A param the run does not record (one added to the schema after it ran) counts as its schema
    default. That is the behaviour the run had only where the new param's default keeps the old behaviour
    (``train.max_tokens_per_pass``'s does not: older runs never split a batch), which is why the sweep report
    also keys a run by the commit it ran on. A whole-number float is written as the int it equals (YAML's
    ``32`` and the schema's ``32.0`` are one value)."""
    def canonical(v):
        return int(v) if isinstance(v, float) and v.is_integer() else [canonical(x) for x in v] if isinstance(
            v, list) else v

    full = {**flatten(Params()), **params}
    picks = full["train.select"] != "last" or full["train.early_stopping_patience"] is not None
    ignored = IGNORED_FOR_SEEDS + (() if picks else BOOKKEEPING)
    return json.dumps({k: canonical(v) for k, v in full.items()
                       if k not in ignored and not k.startswith(NOT_CONFIG)}, sort_keys=True)


def load_params(path: str | Path = "params.yaml", extra_checks: Iterable[Check] = ()) -> Params:
    """Read and validate a params file; raise ParamsError naming every bad key."""
    return parse_params(read_yaml(path), str(path), extra_checks)
