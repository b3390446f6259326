"""Export base model + adapter merged into one standalone model directory.

    python -m sumlora.merge --adapter models/adapter models/merged

The result is plain safetensors + tokenizer (+ the adapter's prompt template) that
``AutoModelForCausalLM.from_pretrained`` loads without peft or bitsandbytes.

QLoRA trains the adapter against the 4-bit NF4 base. Merging loads that same 4-bit base,
de-quantizes it (the exact weights the adapter was trained with) to ``--dtype``, then adds the
LoRA update, so the merged model computes what base + adapter computed. It never merges into
4-bit weights: re-quantizing W + BA to NF4 rounds most of the small LoRA update away and
degrades the model, so this tool has no such mode (and says which way it merged).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sumlora.core import cli

MERGE_INFO = "merge_info.json"  # beside the merged model: what was merged, and how


def merge(base_dir, adapter_dir, out_dir, model_params, dtype: str = "float32") -> dict:
    """Merge ``adapter_dir`` into the de-quantized base in ``base_dir``; write ``out_dir`` whole."""
    from sumlora.modeling import load_model_and_tokenizer, read_base_info, write_model_dir
    from sumlora.prompt import PromptTemplate

    # quantized as in training, then de-quantized to dtype and the adapter merged in (checked before loading)
    merged, tok = load_model_and_tokenizer(base_dir, model_params, adapter_dir, dequantize_to=dtype)
    template = PromptTemplate.load(adapter_dir)
    merged.config.use_cache = True
    info = {"base_model": read_base_info(base_dir), "adapter": str(adapter_dir), "dtype": dtype,
            "base_dequantized_from": model_params.quant_type if model_params.load_in_4bit else None}
    write_model_dir(out_dir, merged, tok, template, MERGE_INFO, info)
    return info


def parser():
    ap = cli.parser("sumlora.merge", __doc__)
    cli.output(ap, "out_dir", kind="dir", help="new or empty directory to write (or one this command wrote)")
    cli.input(ap, "--adapter", required=True, help="adapter directory (models/adapter)")
    cli.input(ap, "--base", default=Path("models/base"), help="base model directory")
    cli.input(ap, "--params", default=Path("params.yaml"), help="params file for model settings")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="dtype of the merged weights (default float32)")
    return ap


def main(argv: list[str]) -> int:
    return cli.call(_merge, argv)


def _merge(argv: list[str]) -> int:
    from sumlora.core.params import ModelParams, load_params

    args = cli.parse(parser(), argv)  # the write policy: refused before the model loads
    cli.offline()
    model_params = load_params(args.params).model if args.params.is_file() else ModelParams()
    info = merge(args.base, args.adapter, args.out_dir, model_params, args.dtype)
    how = (f"de-quantized from 4-bit {info['base_dequantized_from']} to {info['dtype']} (not merged into "
           "4-bit weights: re-quantizing would round most of the LoRA update away)"
           if info["base_dequantized_from"] else f"in {info['dtype']}")
    print(f"{args.out_dir}: {args.base} + {args.adapter} merged, base {how}. "
          f"Load it with AutoModelForCausalLM.from_pretrained({str(args.out_dir)!r}).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
