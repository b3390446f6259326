"""Record what the base model is made from, so that new weights under the same model.name rerun the pipeline.

    python -m stages.model_source data/model_source.json

DVC sees params and files of the repository, not the contents of a model directory elsewhere or of the
embedded GGUF file inside an installed package. This stage runs at every `dvc repro` (always_changed in
dvc.yaml: a second at most for the embedded model) and writes their hash (sumlora.model_source.identity);
the base_model stage depends on the file, so it reruns, and all that is built on it, only when the bytes
changed. A hub model is identified by its id and model.revision: pin the revision to pin its weights.
"""

from __future__ import annotations

from sumlora.core import atomic, cli
from sumlora.core.params import load_params
from sumlora.model_source import identity


def parser():
    return cli.path_parser("stages.model_source", __doc__, "file:out_file")


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    model = load_params().model
    atomic.write_json(args.out_file, identity(model.name, model.revision))
    print(f"model.name {model.name!r}: identity written to {args.out_file}")


if __name__ == "__main__":
    cli.run_stage(main)
