"""Write the release: the adapter with a model card, generation config and the base's tokenizer.

    python -m stages.release models/base models/adapter metrics data/predictions/finetuned.json requirements.lock \
        sweep/seeds.json models/release

Reads rouge.json, train.json and data.json from the metrics directory, the fine-tuned generate stage's run record
(the dtypes, decoding and batch the scored summaries were computed with), the tested versions from the lock file
(the card's install line) and the sweep's seed groups (the card's seed spread); writes the release directory
whole (sumlora/release.py says what is in it). `dvc artifacts get` fetches it by name (dvc.yaml artifacts).
"""

from __future__ import annotations

from sumlora.core import cli
from sumlora.core.params import load_params


def parser():
    ap = cli.path_parser("stages.release", __doc__, "in:base_dir", "in:adapter_dir", "in:metrics_dir", "in:run",
                          "in:lock",
                          "in:seeds", "dir:out_dir")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    cli.offline()
    from sumlora.modeling import check_adapter
    from sumlora.release import read_run_record, write_release

    check_adapter(args.adapter_dir, args.base_dir)  # complete, safetensors, trained on this base
    run = read_run_record(args.run)  # what the generate stage used: not worked out again
    release = write_release(args.out_dir, args.base_dir, args.adapter_dir, args.metrics_dir, params, run,
                            args.lock, args.seeds)
    print(f"release of an adapter on {release['base']['base_model']} -> {args.out_dir}")


if __name__ == "__main__":
    cli.run_stage(main)
