"""A generic validator: build a tree of dataclasses from a parsed YAML mapping, collecting every problem.

Nothing here knows the params schema (that is :mod:`sumlora.core.params`). Each problem is
reported with its key path (``lora.r: must be >= 1, got 0``); unknown keys get a "did you
mean" suggestion; a float written ``2e-4`` (a string to PyYAML) gets the spelling to use.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path

import yaml

from sumlora.core.errors import ParamsError


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that repeats in one mapping (PyYAML keeps the last silently; DVC's
    ruamel refuses the file, so ``dvc repro`` would fail after the check said ok)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found the key {key!r} twice (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path):
    """The parsed YAML of ``path``; a missing, directory, binary or malformed file, or one with a repeated key, is
    one ParamsError."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path}: is a directory, not a params file")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
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


INT_LIMIT = 2**31  # every integer param is below this (steps, sizes, counts); the seed has its own range


def _number_problem(value) -> str | None:
    """Why a number YAML parsed cannot be a param: not finite (``.nan``, ``.inf``), or an integer too large for
    the libraries it is passed to. Applies to every numeric field, whatever its check() says."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        return f"must be below {INT_LIMIT:,} in size, got {value:,}"
    return None


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
        elif problem := _number_problem(data[name]):
            errors.append(f"{path}: {problem}")
            bad.add(name)
        else:
            kwargs[name] = float(data[name]) if tp is float else data[name]
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        errors.extend(f"{prefix}{k}: {msg}" for k, msg in obj.check() if k not in bad)
    return obj
