"""A generic validator: build a tree of dataclasses from a parsed YAML mapping, collecting every problem.

Nothing here knows the params schema (that is :mod:`sumlora.core.params`). Each problem is
reported with its key path (``lora.r: must be >= 1, got 0``); unknown keys get a "did you
mean" suggestion; a float written ``2e-4`` (a string to PyYAML) gets the spelling to use.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path

import yaml

from sumlora.core.errors import ParamsError


def read_yaml(path: str | Path):
    """The parsed YAML of ``path``; a missing, directory, binary or malformed file is one ParamsError."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path}: is a directory, not a params file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None


def type_ok(value, tp) -> bool:
    """Whether ``value`` (as YAML parsed it) fits the annotation ``tp`` (bool is not an int here)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(type_ok(v, item) for v in value)
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


def build(cls, data, prefix: str, errors: list[str]):
    """Build dataclass ``cls`` from ``data``, appending every problem to ``errors``.

    Every field must be present (the file is the one place values are set). Bad or missing
    fields take the dataclass default so that the ``check()`` of the valid fields still runs
    and every problem is reported in one pass; the caller rejects the result if errors exist.
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
                kwargs[name] = build(tp, data[name], f"{path}.", errors)
            continue
        if name not in data:
            errors.append(f"{path}: missing (every param must be set in params.yaml so DVC can track it)")
            bad.add(name)
        elif not type_ok(data[name], tp):
            hint = ""
            if tp in (float, float | None) and isinstance(data[name], str) and _float_or_none(data[name]) is not None:
                hint = f" (YAML reads {data[name]} as a string; write {_yaml_float(data[name])})"
            errors.append(f"{path}: expected {_type_name(tp)}, got {data[name]!r} ({type(data[name]).__name__})"
                          + hint)
            bad.add(name)
        else:
            kwargs[name] = float(data[name]) if tp is float else data[name]
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        errors.extend(f"{prefix}{k}: {msg}" for k, msg in obj.check() if k not in bad)
    return obj
