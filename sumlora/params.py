"""The params command: check a params file, or print the ``-S`` arguments that turn one into another.

    python -m sumlora.params check params.yaml
    python -m sumlora.params set-args configs/phi2_gpu.yaml [params.yaml]

``set-args`` prints the ``-S key=value`` arguments that turn the current params.yaml into
the target configuration, for ``dvc exp run $(...)``. ``check`` runs the same validation as
the ``check_params`` stage, the prompt template's and the model's checks included.
"""

from __future__ import annotations

from pathlib import Path

from sumlora.core import cli
from sumlora.core.params import Params, flatten, load_params
from sumlora.model_source import problems
from sumlora.prompt import check_template_fits


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


def parser():
    ap = cli.parser("sumlora.params", __doc__)
    ap.add_argument("action", choices=("check", "set-args"), help="check a params file, or print -S arguments")
    cli.input(ap, "target", help="the params file to check, or the configuration to turn params.yaml into")
    cli.input(ap, "current", nargs="?", default=Path("params.yaml"), help="set-args: the params file to change")
    return ap


def main(argv: list[str]) -> int:
    args = cli.parse(parser(), argv)
    checks = [check_template_fits] + ([problems] if args.action == "check" else [])  # set-args: maybe another machine
    target = load_params(args.target, extra_checks=checks)
    if args.action == "check":
        print(f"{args.target}: ok")
        return 0
    current = load_params(args.current)
    print(" ".join(set_args(target, current)))
    return 0


if __name__ == "__main__":
    cli.run(main)
