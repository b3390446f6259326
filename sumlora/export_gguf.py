"""Export a release's merged model as GGUF files for llama.cpp and Ollama, with an Ollama Modelfile.

    python -m sumlora.export_gguf models/release models/gguf                 # bf16 and q8_0
    python -m sumlora.export_gguf models/release models/gguf --types q8_0
    ollama create dialogsum -f models/gguf/Modelfile                         # then: ollama run dialogsum

Reads ``RELEASE/merged`` (the release stage's merged model: ``release.merged_model``) and writes, in OUT:
``NAME-bf16.gguf`` (the merged weights as they are, when they are bfloat16: the same numbers), ``NAME-q8_0.gguf``
(8-bit blocks of 32, llama.cpp's Q8_0), and ``Modelfile``: the training prompt as Ollama's template, the end
marker as a stop string, greedy decoding, the pipeline's ``max_new_tokens``.

The file is written with the ``gguf`` package's own writer, tensor names (``TensorNameMap``), quantizer and
tokenizer readers (``BpeVocab``, ``SpecialVocab``); only Llama-architecture models (the embedded SmolLM2 and
its kind) are supported here; for other architectures use llama.cpp's ``convert_hf_to_gguf.py`` on
``merged/``. One thing is this module's own: llama.cpp's rotary embedding pairs the two halves of each head
differently from transformers', so the query and key projections are reordered per head (transformers'
GGUF loader undoes exactly that on reading, which the round-trip test relies on).
"""

from __future__ import annotations

import json
from pathlib import Path

from sumlora.core import atomic, cli
from sumlora.core.errors import ModelError

TYPES = ("bf16", "q8_0", "f32")
ARCH = "llama"


def rotary_order(weight, heads: int):
    """Rows of a query or key projection reordered from transformers' rotary layout (each head's first and second
    half) to llama.cpp's (pairs interleaved)."""
    out_features = weight.shape[0]
    return (weight.reshape(heads, 2, out_features // heads // 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def gguf_tensors(model, config) -> list[tuple[str, object]]:
    """(GGUF name, float32 numpy array) for every weight of a Llama-architecture ``model``, query and key rows in
    llama.cpp's rotary order; a tied output head is left out (llama.cpp reuses the token embedding)."""
    import gguf

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out = []
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"{key}: no GGUF name for this weight (not a Llama-architecture model?)")
        data = tensor.float().numpy()
        if key.endswith("q_proj.weight"):
            data = rotary_order(data, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            data = rotary_order(data, config.num_key_value_heads)
        out.append((name, data))
    return out


def qtype_of(kind: str, data):
    """The GGML type a tensor is stored in: 1-D tensors (norms) stay float32, as llama.cpp keeps them; Q8_0 needs
    rows of a multiple of 32 (others stay bf16)."""
    import gguf

    q = gguf.GGMLQuantizationType
    if kind == "f32" or data.ndim == 1:
        return q.F32
    if kind == "q8_0" and data.shape[-1] % 32 == 0:
        return q.Q8_0
    return q.BF16


def tokenizer_pre(release_info: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer: for the embedded base the one its own GGUF file declares;
    otherwise "default" (llama.cpp's converter recognises others by hashing their output; a model whose
    pre-tokenizer differs may split words differently under llama.cpp)."""
    if (release_info.get("base", {}).get("base_info") or {}).get("source") != "embedded":
        return "default"
    import gguf

    from sumlora.convert import embedded_gguf_path

    field = gguf.GGUFReader(embedded_gguf_path()).fields["tokenizer.ggml.pre"]
    return bytes(field.parts[field.data[0]]).decode()


def write_gguf(path: Path, merged_dir: Path, kind: str, name: str, pre: str = "default") -> dict:
    """One GGUF file of the merged model in ``merged_dir``, its tensors stored as ``kind``."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(merged_dir)
    if config.model_type != ARCH:
        raise ModelError(f"{merged_dir}: a {config.model_type} model; GGUF export here supports Llama-architecture "
                         "models only (use llama.cpp's convert_hf_to_gguf.py on this directory)")
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    file_type = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "f32": gguf.LlamaFileType.ALL_F32}[kind]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(path, ARCH)  # path: inside the output directory's temporary copy (atomic.output_dir)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = gguf.vocab.BpeVocab(merged_dir)
    tokens, types = [], []
    for text, _score, token_type in vocab.all_tokens():
        tokens.append(text)
        types.append(token_type)
    tokens += [f"[PAD{i}]".encode() for i in range(config.vocab_size - len(tokens))]  # rows past the vocabulary
    types += [gguf.TokenType.UNUSED] * (config.vocab_size - len(types))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(merged_dir, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer)
    counts: dict[str, int] = {}
    for tensor_name, data in gguf_tensors(model, config):
        qtype = qtype_of(kind, data)
        stored = data if qtype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(data, qtype)
        writer.add_tensor(tensor_name, stored, raw_dtype=qtype)  # the shape follows from the bytes and the type
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": path.name, "type": kind, "tensors_by_type": counts}


def modelfile(gguf_name: str, template, max_new_tokens: int) -> str:
    """An Ollama Modelfile: the training prompt with Ollama's ``{{ .Prompt }}`` where the dialogue goes, the end
    marker as a stop string, greedy decoding, at most ``max_new_tokens``."""
    if template.chat:
        raise ModelError("the adapter was trained in the chat style: Ollama applies the model's own chat template "
                         "from the GGUF file; no TEMPLATE is written for it")
    prompt = template.render_prompt("{{ .Prompt }}")
    return "\n".join([f"FROM ./{gguf_name}", f'TEMPLATE """{prompt}"""',
                      f"PARAMETER stop {json.dumps(template.end_marker)}", "PARAMETER temperature 0",
                      "PARAMETER top_k 1", f"PARAMETER num_predict {max_new_tokens}", ""])


def parser():
    ap = cli.parser("sumlora.export_gguf", __doc__)
    cli.input(ap, "release", help="the release directory (models/release), with its merged/ model")
    cli.output(ap, "out_dir", kind="dir", help="new or empty directory for the GGUF files and the Modelfile")
    ap.add_argument("--types", default="bf16,q8_0",
                    help=f"comma-separated GGUF types to write, of {', '.join(TYPES)} (default bf16,q8_0)")
    return ap


def main(argv: list[str]) -> None:
    from transformers import GenerationConfig

    from sumlora.prompt import PromptTemplate

    args = cli.parse(parser(), argv)
    kinds = [k.strip().lower() for k in args.types.split(",") if k.strip()]
    bad = [k for k in kinds if k not in TYPES]
    if bad or not kinds:
        raise ModelError(f"--types {args.types}: choose from {', '.join(TYPES)}")
    merged = args.release / "merged"
    if not (merged / "config.json").is_file():
        raise ModelError(f"{args.release}: no merged/ model (the release stage writes it with release.merged_model: "
                         "true; or merge one with python -m sumlora.merge)")
    cli.offline()
    template = PromptTemplate.load(args.release)
    generation = GenerationConfig.from_pretrained(args.release)
    max_new = generation.max_new_tokens
    info = json.loads((args.release / "release.json").read_text())
    name = f"{info['base']['base_model'].rsplit('/', 1)[-1]}-dialogsum"
    pre = tokenizer_pre(info)
    written = []
    with atomic.output_dir(args.out_dir) as tmp:
        for kind in kinds:
            written.append(write_gguf(tmp / f"{name}-{kind}.gguf", merged, kind, name, pre))
        atomic.write_text(tmp / "Modelfile", modelfile(f"{name}-{'q8_0' if 'q8_0' in kinds else kinds[0]}.gguf",
                                                         template, max_new))
        atomic.write_json(tmp / "export.json", {"release": str(args.release), "tokenizer_pre": pre, "files": written})
    for w in written:
        types = ", ".join(f"{n} {t}" for t, n in w["tensors_by_type"].items())
        print(f"{args.out_dir / w['file']}: {w['type']} ({types})")
    print(f"{args.out_dir / 'Modelfile'}: ollama create dialogsum -f {args.out_dir / 'Modelfile'}")
    if (generation.num_beams or 1) > 1:
        print(f"note: the release's summaries used beam search ({generation.num_beams} beams); Ollama and llama.cpp "
              "decode greedily, so their summaries can differ")


if __name__ == "__main__":
    cli.run(main)
