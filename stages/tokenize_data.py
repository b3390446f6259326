"""Render the prompt template, tokenize, mask labels, drop over-length rows, shuffle.

    python -m stages.tokenize_data data/formatted models/base data/tokenized metrics/data.json

Writes train/validation.jsonl ({id, input_ids, labels}) and prompt_template.json, the template
used: the train stage copies it beside the adapter and generation reads it from there.
"""

from __future__ import annotations

import json

from sumlora.core import atomic, cli
from sumlora.core.errors import ParamsError
from sumlora.core.params import load_params
from sumlora.data import load_records
from sumlora.modeling import load_tokenizer, model_max_positions
from sumlora.prompt import template_for
from sumlora.tokenizing import max_length, tokenize_rows


def parser():
    ap = cli.path_parser("stages.tokenize_data", __doc__, "in:formatted_dir", "in:base_dir", "dir:out_dir",
                         "file:metrics")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    cli.offline()
    from transformers import AutoConfig

    tok = load_tokenizer(args.base_dir)
    model_limit = model_max_positions(AutoConfig.from_pretrained(args.base_dir))
    try:
        limit = max_length(model_limit, params.tokenize.max_length)
    except ValueError as e:
        raise ParamsError(f"params.yaml: {e}") from None
    counts = args.formatted_dir / "counts.json"  # what the format stage dropped as repeated dialogues
    metrics = {"max_length": limit, "model_context": model_limit,
               "format": json.loads(counts.read_text()) if counts.is_file() else None}
    template = template_for(params.format.prompt)
    with atomic.output_dir(args.out_dir) as tmp:
        template.save(tmp)  # the template these rows were rendered with travels with them
        for split in ("train", "validation"):
            rows = load_records(args.formatted_dir / f"{split}.jsonl")
            kept, counts = tokenize_rows(rows, tok, template, limit, params.tokenize.train_on_prompt,
                                         params.seed)
            if not kept:  # nothing to train or evaluate on: fail here, not in train
                raise ParamsError(f"tokenize.max_length: {limit} drops all {counts['rows']} {split} rows of "
                                  f"{args.formatted_dir / (split + '.jsonl')} (the shortest has "
                                  f"{counts['shortest_row_tokens']} tokens): raise tokenize.max_length")
            atomic.write_jsonl(tmp / f"{split}.jsonl", kept)
            metrics[split] = counts
            print(f"{split}: kept {counts['kept']} of {counts['rows']} "
                  f"(dropped {counts['dropped_over_length']} over {limit} tokens)")
    atomic.write_json(args.metrics, metrics)


if __name__ == "__main__":
    cli.run_stage(main)
