"""Summarize one dialogue, or a file of them, from the command line with the base model + a trained adapter.

    python -m sumlora.summarize --adapter models/adapter dialogue.txt
    cat dialogue.txt | python -m sumlora.summarize --adapter models/adapter
    python -m sumlora.summarize --adapter models/adapter --input dialogues.jsonl --output summaries.jsonl

A file (``--input``: JSONL rows ``{"id", "dialogue"}``, or plain text with dialogues separated by blank
lines) is summarized in batches with a progress display, written whole at the end, and resumable: a rerun
skips what an interrupted run of the same input, adapter, base and settings already wrote (sumlora/batch.py).
An existing output is replaced only with ``--force``; the output may not be the input (the write policy,
sumlora/core/outputs.py).

The prompt template saved beside the adapter is used, so the prompt is the one the adapter
was trained with. Quantization settings come from params.yaml (``model`` section) when it
exists, and so does the decoding (``generate``: max_new_tokens, dequantize, num_beams,
length_penalty). Errors (missing adapter, adapter for another base model, empty input, input longer
than the model's context) print one line and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sumlora.core import cli
from sumlora.core.errors import DataError, SumloraError


def parser():
    ap = cli.parser("sumlora.summarize", __doc__)
    cli.input(ap, "dialogue", nargs="?", default=None, help="dialogue text file, or - for standard input (default)")
    cli.input(ap, "--adapter", required=True, help="adapter directory (models/adapter)")
    cli.input(ap, "--base", default=Path("models/base"), help="base model directory")
    cli.input(ap, "--params", default=Path("params.yaml"), help="params file for model settings")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: generate.max_new_tokens")
    cli.input(ap, "--input", help="a file of dialogues: .jsonl rows {id, dialogue}, or plain text")
    cli.output(ap, "--output", help="where --input's summaries go (.jsonl, or one per line)")
    ap.add_argument("--batch-size", type=int, default=None, help="with --input; default: generate.batch_size")
    return ap


def main(argv: list[str], stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def run(_):
        args = cli.parse(parser(), argv)
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise SumloraError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
        if args.input is None and args.output is None:
            print(summarize(args, stdin), file=stdout)
        elif args.input is None or args.output is None or args.dialogue is not None:
            raise SumloraError("--input and --output go together, without a dialogue file argument")
        else:
            summarize_batch(args)

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


def model_settings(params_file: Path):
    """The ``model`` and ``generate`` params of ``params_file``, or their defaults where there is no such file
    (a command run outside the repository); also used by sumlora.serve."""
    from sumlora.core.params import GenerateParams, ModelParams, load_params

    if params_file.is_file():
        params = load_params(params_file)
        return params.model, params.generate
    return ModelParams(), GenerateParams()


def over_context(n_prompt: int, max_new: int, context: int | None) -> str | None:
    """Why a prompt of ``n_prompt`` tokens plus ``max_new`` new ones does not fit the model's ``context``, or None
    (the words of the summarize command and the service; the generate stages list many with check_fits)."""
    if context is None or n_prompt + max_new <= context:
        return None
    return (f"the prompt is {n_prompt} tokens; with {max_new} new tokens that exceeds the model's context of "
            f"{context} tokens")


def _load(args):
    """Model, tokenizer, template, generate params and max new tokens: from params.yaml when it exists."""
    cli.offline()
    from sumlora.modeling import load_model_and_tokenizer, resolve_dequantize
    from sumlora.prompt import PromptTemplate

    model_params, gp = model_settings(args.params)
    max_new = args.max_new_tokens if args.max_new_tokens is not None else gp.max_new_tokens
    model, tok = load_model_and_tokenizer(args.base, model_params, args.adapter,  # checks adapter and base first
                                          resolve_dequantize(gp.dequantize, model_params))
    template = PromptTemplate.load(args.adapter)  # the template the adapter was trained with
    return model, tok, template, gp, max_new


def decoding(args) -> dict:
    """The beam search settings of params.yaml's ``generate`` (greedy where there is no params file)."""
    gp = model_settings(args.params)[1]
    return {"num_beams": gp.num_beams, "length_penalty": gp.length_penalty}


def summarize(args, stdin) -> str:
    from sumlora.generation import generate_summaries
    from sumlora.modeling import model_max_positions
    from sumlora.tokenizing import encode_prompt

    path = args.dialogue or "-"
    where = "standard input" if path == "-" else path
    text = stdin.read() if path == "-" else read_dialogue(Path(path))
    if not text.strip():
        raise DataError(f"{where}: empty input, nothing to summarize")
    model, tok, template, _, max_new = _load(args)
    n_prompt = len(encode_prompt(tok, template, text))
    context = model_max_positions(model.config)
    if problem := over_context(n_prompt, max_new, context):
        raise DataError(f"{where}: {problem}. Nothing was generated: shorten the dialogue by at least "
                        f"{n_prompt + max_new - context} tokens")
    [summary] = generate_summaries(model, tok, template, [text], batch_size=1, max_new_tokens=max_new,
                                   **decoding(args))
    return summary


def fingerprint(args, model_params, gp, max_new: int) -> dict:
    """What an output of ``--input`` depends on: the input file's bytes, the adapter and base (their files'
    SHA-256), and the settings that shape a summary. Recorded in ``OUTPUT.partial``; a resumed run must match."""
    import dataclasses
    import hashlib

    from sumlora.modeling import base_identity, resolve_dequantize, sha256_file

    def tree(d: Path) -> str:
        return hashlib.sha256("".join(f"{f.relative_to(d).as_posix()}:{sha256_file(f)}\n" for f in sorted(
            p for p in d.rglob("*") if p.is_file())).encode()).hexdigest()

    return {"input": sha256_file(args.input), "adapter": tree(args.adapter), "base": base_identity(args.base),
            "max_new_tokens": max_new, "dequantize": resolve_dequantize(gp.dequantize, model_params),
            **({"num_beams": gp.num_beams, "length_penalty": gp.length_penalty} if gp.num_beams > 1 else {}),
            "model": dataclasses.asdict(model_params)}


def summarize_batch(args) -> None:
    from sumlora.batch import check_partial, read_dialogues, summarize_file
    from sumlora.generation import check_fits, generate_summaries, summary_prompts
    from sumlora.modeling import model_max_positions

    if args.batch_size is not None and args.batch_size < 1:
        raise SumloraError(f"--batch-size: must be >= 1, got {args.batch_size}")
    read_dialogues(args.input)  # every row checked before the model loads
    model_params, gp = model_settings(args.params)
    max_new = args.max_new_tokens if args.max_new_tokens is not None else gp.max_new_tokens
    source = fingerprint(args, model_params, gp, max_new)
    check_partial(args.output, source, args.force)  # a partial output of other work: refused before loading
    model, tok, template, gp, max_new = _load(args)
    context = model_max_positions(model.config)

    def check(dialogues, names):
        check_fits(summary_prompts(tok, template, dialogues), names, max_new, context)

    def run(dialogues):
        return generate_summaries(model, tok, template, dialogues, len(dialogues), max_new, **decoding(args))

    done, skipped = summarize_file(args.input, args.output, run, args.batch_size or gp.batch_size, check, source)
    print(f"{done} summarized" + (f", {skipped} resumed from {args.output}.partial" if skipped else "")
          + f" -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
