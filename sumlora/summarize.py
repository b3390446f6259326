"""Summarize one dialogue from the command line with the base model + a trained adapter.

    python -m sumlora.summarize --adapter models/adapter dialogue.txt
    cat dialogue.txt | python -m sumlora.summarize --adapter models/adapter

The prompt template saved beside the adapter is used, so the prompt is the one the adapter
was trained with. Quantization settings come from params.yaml (``model`` section) when it
exists. Errors (missing adapter, adapter for another base model, empty input, input longer
than the model's context) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sumlora.core import cli
from sumlora.core.errors import DataError, SumloraError


def main(argv: list[str], stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    ap = argparse.ArgumentParser(prog="python -m sumlora.summarize", description=__doc__.splitlines()[0])
    ap.add_argument("input", nargs="?", default="-", help="dialogue text file, or - for standard input")
    ap.add_argument("--adapter", type=Path, required=True, help="adapter directory (models/adapter)")
    ap.add_argument("--base", type=Path, default=Path("models/base"), help="base model directory")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file for model settings")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: generate.max_new_tokens")
    args = ap.parse_args(argv)

    def run(_):
        print(summarize(args, stdin), file=stdout)

    return cli.call(run, argv)


def read_dialogue(path: Path) -> str:
    """The text of a dialogue file; a directory or a file that is not UTF-8 text is a clear error."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a dialogue text file (or - for standard input)")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 4]!r}); "
                        "give a plain-text dialogue") from None


def summarize(args, stdin) -> str:
    cli.offline()
    from sumlora.core.params import GenerateParams, ModelParams, load_params
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer, model_max_positions, resolve_dequantize
    from sumlora.prompt import PromptTemplate
    from sumlora.tokenizing import encode_prompt

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise SumloraError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    where = "standard input" if args.input == "-" else args.input
    text = stdin.read() if args.input == "-" else read_dialogue(Path(args.input))
    if not text.strip():
        raise DataError(f"{where}: empty input, nothing to summarize")
    if args.params.is_file():
        params = load_params(args.params)
        model_params, gp = params.model, params.generate
    else:
        model_params, gp = ModelParams(), GenerateParams()
    max_new = args.max_new_tokens if args.max_new_tokens is not None else gp.max_new_tokens
    model, tok = load_model_and_tokenizer(args.base, model_params, args.adapter,  # checks adapter and base first
                                          resolve_dequantize(gp.dequantize, model_params))
    template = PromptTemplate.load(args.adapter)  # the template the adapter was trained with
    n_prompt = len(encode_prompt(tok, template, text))
    context = model_max_positions(model.config)
    if context is not None and n_prompt + max_new > context:
        raise DataError(f"{where}: the prompt is {n_prompt} tokens; with {max_new} new tokens that exceeds the "
                        f"model's context of {context} tokens. Nothing was generated: shorten the dialogue "
                        f"by at least {n_prompt + max_new - context} tokens")
    [summary] = generate_summaries(model, tok, template, [text], batch_size=1, max_new_tokens=max_new)
    return summary


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
