"""Validate all of params.yaml before any other stage runs.

    python -m stages.check_params params.yaml data/params.ok

Every other stage depends on data/params.ok, so `dvc repro`, `dvc repro <stage>` and
`dvc exp run` (queued too) run this first; with a bad value it fails here, listing every
problem with its key, before DVC has removed any other stage's outputs. Besides the schema
(types, ranges, finite numbers, no repeated key) it reads the model's config, without its
weights, for what only the model can tell (sumlora.model_source.problems). The file it
writes is the same for every valid params file, so a params change reruns only the stages
that use the changed params.
"""

from __future__ import annotations

from sumlora.core import atomic, cli
from sumlora.core.params import load_params
from sumlora.model_source import problems
from sumlora.prompt import check_template_fits

VALID = "params.yaml: valid\n"


def parser():
    ap = cli.path_parser("stages.check_params", __doc__, "in:params_file", "file:out_file")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    load_params(args.params_file, extra_checks=[check_template_fits, problems])  # every problem, by key
    atomic.write_text(args.out_file, VALID)
    print(f"{args.params_file}: valid")


if __name__ == "__main__":
    cli.run_stage(main)
