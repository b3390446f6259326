"""Typed schema for params.yaml.

``load_params()`` validates the whole file before any stage does work and reports
every problem at once, each with its key path (``lora.r: must be >= 1, got 0``).
Unknown keys are rejected (a typo such as ``lora.rank`` would otherwise be ignored).

Also a command: ``python -m sumlora.params set-args configs/phi2_gpu.yaml`` prints the
``-S key=value`` arguments that turn the current params.yaml into that configuration,
for ``dvc exp run $(...)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sumlora.errors import ParamsError

DTYPES = ("float32", "bfloat16", "float16")

@dataclass
class ModelParams:
    name: str = "embedded"
    trust_remote_code: bool = False
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    quant_storage: str = "uint8"

    def check(self) -> list[tuple[str, str]]:
        errs = []
        if self.quant_storage not in ("uint8",) + DTYPES:
            errs.append(("quant_storage", f"must be 'uint8' or one of {DTYPES}, got {self.quant_storage!r}"))
        if not self.name.strip():
            errs.append(("name", "must not be empty"))
        if self.quant_type not in ("nf4", "fp4"):
            errs.append(("quant_type", f"must be 'nf4' or 'fp4', got {self.quant_type!r}"))
        if self.compute_dtype not in DTYPES:
            errs.append(("compute_dtype", f"must be one of {DTYPES}, got {self.compute_dtype!r}"))
        return errs


@dataclass
class FormatParams:
    max_train_rows: int | None = None
    max_validation_rows: int | None = None

    def check(self):
        return [(k, f"must be >= 1 or null, got {v}") for k, v in dataclasses.asdict(self).items()
                if v is not None and v < 1]


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
    dropout: float = 0.05
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
    learning_rate: float = 3.0e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    optim: str = "paged_adamw_8bit"
    group_by_length: bool = True
    eval_steps: int = 50
    save_steps: int = 50
    max_eval_samples: int | None = 40
    logging_steps: int = 5

    def check(self):
        errs = []
        for k in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                  "logging_steps"):
            if getattr(self, k) < 1:
                errs.append((k, f"must be >= 1, got {getattr(self, k)}"))
        if self.learning_rate <= 0:
            errs.append(("learning_rate", f"must be > 0, got {self.learning_rate}"))
        for k in ("warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, k) < 0:
                errs.append((k, f"must be >= 0, got {getattr(self, k)}"))
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            errs.append(("max_eval_samples", f"must be >= 1 or null, got {self.max_eval_samples}"))
        if self.optim not in OPTIMIZERS:
            errs.append(("optim", f"must be one of {OPTIMIZERS}, got {self.optim!r}"))
        if self.lr_scheduler not in SCHEDULERS:
            errs.append(("lr_scheduler", f"must be one of {SCHEDULERS}, got {self.lr_scheduler!r}"))
        for k in ("eval_steps", "save_steps", "warmup_steps"):
            if getattr(self, k) > self.max_steps:
                errs.append((k, f"must be <= train.max_steps ({self.max_steps}), got {getattr(self, k)}"))
        return errs


@dataclass
class GenerateParams:
    num_dialogues: int | None = 50
    max_new_tokens: int = 80
    batch_size: int = 16

    def check(self):
        errs = [(k, f"must be >= 1, got {getattr(self, k)}") for k in ("max_new_tokens", "batch_size")
                if getattr(self, k) < 1]
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
class Params:
    seed: int = 42
    model: ModelParams = field(default_factory=ModelParams)
    format: FormatParams = field(default_factory=FormatParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    lora: LoraParams = field(default_factory=LoraParams)
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def check(self):
        errs = []
        if self.seed < 0:
            errs.append(("seed", f"must be >= 0, got {self.seed}"))
        return errs


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _yaml_float(text: str) -> str:
    """``2e-4`` -> ``2.0e-4``: the spelling PyYAML reads as a float."""
    m = re.fullmatch(r"([+-]?\d+)([eE][+-]?\d+)", text.strip())
    return f"{m.group(1)}.0{m.group(2)}" if m else repr(float(text))


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("NoneType", "null")


def _suggest(key: str, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    close = close or [k for k in known if key.startswith(k) or k.startswith(key)][:1]
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return "known: " + ", ".join(f"{prefix}{k}" for k in known)


def _build(cls, data, prefix: str, errors: list[str]):
    """Build dataclass ``cls`` from ``data``, appending every problem to ``errors``.

    Bad or missing fields take their defaults so that the range checks of the valid fields still
    run and every problem is reported in one pass; the caller rejects the result if errors exist.
    """
    if not isinstance(data, dict):
        errors.append(f"{prefix or '<top level>'}: must be a mapping, got {type(data).__name__}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key ({_suggest(str(key), fields, prefix)})")
    kwargs, bad = {}, set()
    for name in fields:
        path = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if name not in data:  # one line for the whole section, not one per key in it
                errors.append(f"{path}: missing section")
                kwargs[name] = tp()
            else:
                kwargs[name] = _build(tp, data[name], f"{path}.", errors)
            continue
        if name not in data:
            errors.append(f"{path}: missing (every param must be set in params.yaml so DVC can track it)")
            bad.add(name)
        elif not _type_ok(data[name], tp):
            hint = ""
            if tp in (float, float | None) and isinstance(data[name], str) and _float_or_none(data[name]) is not None:
                hint = f" (YAML reads {data[name]} as a string; write {_yaml_float(data[name])})"
            errors.append(f"{path}: expected {_type_name(tp)}, got {data[name]!r} ({type(data[name]).__name__})"
                          + hint)
            bad.add(name)
        else:
            kwargs[name] = float(data[name]) if tp is float else data[name]
    obj = cls(**kwargs)
    errors.extend(f"{prefix}{k}: {msg}" for k, msg in obj.check() if k not in bad)
    return obj


def cross_checks(p: Params) -> list[str]:
    """Problems that involve several sections or the machine."""
    import torch

    from sumlora.prompt import DEFAULT

    errs = []
    if p.tokenize.max_length is not None and p.tokenize.max_length < DEFAULT.min_tokens():
        errs.append(f"tokenize.max_length: {p.tokenize.max_length} cannot hold any training row: the prompt "
                    f"template alone has {DEFAULT.min_tokens() - 1} words (set it to a few hundred or more, "
                    "or null for the model's context length)")
    if p.model.load_in_4bit and p.model.compute_dtype == "float16" and not torch.cuda.is_available():
        errs.append("model.compute_dtype: float16 4-bit matmuls need a CUDA GPU; none is available "
                    "(use float32 on CPU)")
    if p.train.optim.endswith("8bit") and not _has_bitsandbytes():
        errs.append(f"train.optim: {p.train.optim} needs bitsandbytes, which is not installed")
    if p.model.load_in_4bit and not _has_bitsandbytes():
        errs.append("model.load_in_4bit: needs bitsandbytes, which is not installed")
    return errs


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def parse_params(data, source: str = "params.yaml") -> Params:
    errors: list[str] = []
    params = _build(Params, data, "", errors)
    if not errors:
        errors.extend(cross_checks(params))
    if errors:
        raise ParamsError(f"{source}: {len(errors)} problem(s):\n" + "\n".join(f"  - {e}" for e in errors))
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming every bad key."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path}: is a directory, not a params file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return parse_params(data, str(path))


def flatten(obj, prefix: str = "") -> dict:
    out = {}
    for k, v in (obj.items() if isinstance(obj, dict) else dataclasses.asdict(obj).items()):
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cli_value(v) -> str:
    """A YAML value with no spaces, so that ``$(...)`` word splitting keeps it whole."""
    if isinstance(v, list):
        return "[" + ",".join(_cli_value(x) for x in v) + "]"
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, str) and (not v or any(c.isspace() for c in v)):
        raise ValueError(f"cannot pass {v!r} as one shell word")
    return str(v)


def set_args(target: Params, current: Params) -> list[str]:
    """``-S key=value`` arguments that change ``current`` into ``target``."""
    cur, tgt = flatten(current), flatten(target)
    args = []
    for k, v in tgt.items():
        if cur.get(k) != v:
            args += ["-S", f"{k}={_cli_value(v)}"]
    return args


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] not in ("check", "set-args"):
        print("usage: python -m sumlora.params check PARAMS.yaml | set-args TARGET.yaml [CURRENT.yaml]",
              file=sys.stderr)
        return 2
    try:
        target = load_params(argv[1])
        if argv[0] == "check":
            print(f"{argv[1]}: ok")
            return 0
        current = load_params(argv[2] if len(argv) == 3 else "params.yaml")
    except ParamsError as e:
        print(e, file=sys.stderr)
        return 1
    print(" ".join(set_args(target, current)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
