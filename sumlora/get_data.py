"""Fill data/raw/dialogsum/ with DialogSum (train/validation/test JSONL), then track it with DVC.

    python -m sumlora.get_data --source ../shared/dialogsum   # a local directory of JSONL files
    python -m sumlora.get_data --source hub                   # knkarthick/dialogsum (needs network)
    dvc add data/raw/dialogsum

Every row is validated (file, line, field) before anything is written; the directory is
replaced whole, and only if it is new, empty or was written by this command (the write policy,
sumlora/core/outputs.py; --force replaces another). This is the only step that may touch the network.
"""

from __future__ import annotations

from pathlib import Path

from sumlora.core import atomic, cli
from sumlora.core.errors import DataError
from sumlora.data import SPLITS, read_jsonl

HUB_ID = "knkarthick/dialogsum"


def from_hub(tmp: Path) -> None:
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID)
    except Exception as e:  # noqa: BLE001 - the hub client raises many types when offline
        raise DataError(f"could not download {HUB_ID} from the Hugging Face hub (offline?): "
                        f"{str(e).splitlines()[0]}. Use --source DIR with a local copy.") from None
    for split in SPLITS:
        ds[split].to_json(tmp / f"{split}.jsonl", lines=True, force_ascii=False)


def parser():
    ap = cli.parser("sumlora.get_data", __doc__)
    cli.input(ap, "--source", required=True, help="'hub' or a directory holding train/validation/test.jsonl")
    cli.output(ap, "--out", kind="dir", default=Path("data/raw/dialogsum"), help="the directory to fill")
    return ap


def main(argv: list[str]) -> int:
    args = cli.parse(parser(), argv)
    hub = str(args.source) == "hub"
    if not hub and not args.source.is_dir():
        raise DataError(f"--source {args.source}: not a directory (give 'hub' or a directory holding "
                        + ", ".join(f"{s}.jsonl" for s in SPLITS) + ")")
    with atomic.output_dir(args.out) as tmp:
        if hub:
            from_hub(tmp)
            sources = {split: tmp / f"{split}.jsonl" for split in SPLITS}
        else:
            sources = {split: args.source / f"{split}.jsonl" for split in SPLITS}
        counts = {split: len(read_jsonl(path)) for split, path in sources.items()}  # validates every row
        if not hub:
            for split, path in sources.items():
                atomic.copy_file(path, tmp / f"{split}.jsonl")
    print(f"{args.out}: " + ", ".join(f"{s} {n} rows" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    cli.run(main)
