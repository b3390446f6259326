"""The params command: check a params file, or print the ``-S`` arguments that turn one into another.

    python -m sumlora.params check params.yaml
    python -m sumlora.params set-args configs/phi2_gpu.yaml [params.yaml]

``set-args`` prints the ``-S key=value`` arguments that turn the current params.yaml into
the target configuration, for ``dvc exp run $(...)``. ``check`` runs the same validation as
the ``check_params`` stage, the prompt template's check included.
"""

from __future__ import annotations

import dataclasses
import sys

from sumlora.core import cli
from sumlora.core.params import Params, load_params
from sumlora.prompt import check_template_fits

USAGE = "usage: python -m sumlora.params check PARAMS.yaml | set-args TARGET.yaml [CURRENT.yaml]"


def flatten(obj, prefix: str = "") -> dict:
    """``{"lora.r": 16, ...}`` from a params object or nested mapping."""
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
        print(USAGE, file=sys.stderr)
        return 2
    target = load_params(argv[1], extra_checks=[check_template_fits])
    if argv[0] == "check":
        print(f"{argv[1]}: ok")
        return 0
    current = load_params(argv[2] if len(argv) == 3 else "params.yaml")
    print(" ".join(set_args(target, current)))
    return 0


if __name__ == "__main__":
    cli.run(main)
