"""Validate all of params.yaml before any other stage runs.

    python -m stages.check_params params.yaml data/params.ok

Every other stage depends on data/params.ok, so `dvc repro`, `dvc repro <stage>` and
`dvc exp run` (queued too) run this first; with a bad value it fails here, listing every
problem with its key, before DVC has removed any other stage's outputs. The file it
writes is the same for every valid params file, so a params change reruns only the stages
that use the changed params.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sumlora import atomic, cli
from sumlora.params import load_params

VALID = "params.yaml: valid\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("params_file", type=Path)
    ap.add_argument("out_file", type=Path)
    args = ap.parse_args(argv)
    load_params(args.params_file)  # ParamsError: every problem with its key path, exit 1
    atomic.write_text(args.out_file, VALID)
    print(f"{args.params_file}: valid")


if __name__ == "__main__":
    cli.run(main)
