"""Loading the base model and adapters for every stage, and the checks that keep them matched.

- ``load_model_and_tokenizer`` is the one loader (4 bit when configured, an adapter attached
  when given); the adapter is checked before the base loads (``check_adapter``).
- ``base_identity`` is the SHA-256 of the base's files: recorded beside each adapter
  (``adapter_info.json``) and part of the training run's fingerprint.
- ``write_model_dir`` writes a model or adapter directory whole (train stage, merge).
The conversion of ``model.name`` into ``models/base`` is :mod:`sumlora.convert`; LoRA is :mod:`sumlora.lora`.
About 200 lines: loading and the checks that make a load safe (adapter files, base identity) are one
concern, and splitting them would make the loader import its checks back from another module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from sumlora.core import atomic, device
from sumlora.core.errors import ModelError
from sumlora.core.params import ModelParams


class _DropKernelsHubNotice(logging.Filter):
    """bitsandbytes logs a WARNING on CPU that it cannot load its optional kernels-hub 4-bit kernel (the
    ``kernels`` package): harmless, it uses its built-in CPU kernel. Every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def quiet_known_notices() -> None:
    """Silence, by their exact text, the notices of dependencies known to be harmless here (each said once in
    plain words where the user should know: the train stage says when the paged optimizer is unpaged)."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHubNotice())
    # peft calls a transformers method deprecated in favour of another: nothing for a user of this tool to change
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


quiet_known_notices()

BASE_INFO = "base_info.json"  # beside the base model: where it came from, architecture, size
ADAPTER_INFO = "adapter_info.json"  # beside an adapter: the identity of the base it was trained on


def model_max_positions(config) -> int | None:
    """The context length from a model config (as the tutorial's get_max_length)."""
    for attr in ("n_positions", "max_position_embeddings", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def compute_dtype(params: ModelParams) -> torch.dtype:
    """The dtype of the matmuls (``model.compute_dtype``, ``auto`` resolved for this machine)."""
    return getattr(torch, device.resolve_compute_dtype(params.compute_dtype))


def bnb_config(params: ModelParams):
    """The BitsAndBytesConfig for QLoRA (None when 4-bit loading is off)."""
    if not params.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.quant_type,
                              bnb_4bit_use_double_quant=params.double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(params))


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


def adapter_info(base_dir: str | Path, identity: str | None = None) -> dict:
    """What is recorded beside an adapter (``adapter_info.json``): the base it was trained on, its info and
    its identity (weights hash, computed unless given)."""
    return {"base_model": read_base_info(base_dir),
            "base_sha256": identity if identity is not None else base_identity(base_dir)}


def write_adapter_info(adapter_dir: str | Path, base_dir: str | Path, identity: str | None = None) -> None:
    atomic.write_json(Path(adapter_dir) / ADAPTER_INFO, adapter_info(base_dir, identity))


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


def load_model_and_tokenizer(base_dir: str | Path, params: ModelParams, adapter_dir: str | Path | None = None,
                             dequantize_to: str | None = None):
    """Load the base model (4-bit when configured) and its tokenizer; attach an adapter if given.

    ``dequantize_to`` (a dtype name; for inference only): de-quantize the 4-bit weights once to that dtype,
    the exact weights the 4-bit matmuls compute with, and merge the adapter into them, instead of
    de-quantizing every weight at every forward pass. The adapter's files and its match with the base are
    checked before the base is loaded."""
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
    if dequantize_to is not None:
        model = dequantized(model, getattr(torch, dequantize_to))
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, base_dir)
        if dequantize_to is not None:
            model = model.merge_and_unload()  # W + (alpha/r) BA in dtype: plain Linear layers, no peft wrapper
    model.eval()
    return model, tok


def dequantized(model, dtype: torch.dtype):
    """``model`` with its 4-bit weights de-quantized once to ``dtype`` (plain Linear layers); a model that is
    not quantized is only cast."""
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize(dtype=dtype)
    return model.to(dtype)


def resolve_dequantize(dequantize: str, params: ModelParams) -> str | None:
    """The dtype generation de-quantizes the 4-bit base to (``generate.dequantize``), or None to keep the 4-bit
    weights. ``auto``: bfloat16 on a CPU with native bfloat16 matmuls (oneDNN; e.g. AVX512-BF16 or AMX), where
    the generate stage runs on it (BENCHMARKS.md, generation); 4 bit otherwise: on a GPU (the memory 4 bit saves
    is the point there) and on other CPUs (float32 weights are 8 times the bytes a decoded token reads through
    bitsandbytes' 4-bit kernel). Nothing to de-quantize for a model not loaded in 4 bit."""
    if not params.load_in_4bit or dequantize == "none":
        return None
    if dequantize != "auto":
        return dequantize
    return "bfloat16" if not torch.cuda.is_available() and device.cpu_has_native_bf16() else None


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
    """Wrap ``model`` (loaded from ``base_dir``) with the trained adapter in ``adapter_dir``, for inference.
    The caller has run :func:`check_adapter` (``load_model_and_tokenizer`` does, before loading the base)."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ModelError(f"{adapter_dir}: its weights do not fit the base model in {base_dir} (size mismatch: "
                         f"trained on another base); use the base it was trained on") from None


SET_FIELDS = ("target_modules", "exclude_modules")  # peft holds these as sets and saves them in hash order


def canonical_adapter_config(directory: Path) -> None:
    """Rewrite ``directory``'s adapter_config.json (if any) with its set-valued fields sorted. peft saves a set in
    the iteration order of the process's string hashes, which Python randomizes per process, so the same adapter
    trained twice would differ in this file alone: a new md5 for DVC, the stages after it rerun for nothing, and
    another copy of the same weights in the cache and on the remote."""
    path = directory / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    for key in SET_FIELDS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    atomic.write_json(path, config)


def write_model_dir(out_dir: str | Path, model, tokenizer, template, info_file: str, info: dict) -> None:
    """Write ``out_dir`` whole (safetensors weights, tokenizer, prompt template, an info file): a new
    directory replaces the old one only once complete, the same bytes for the same model
    (:func:`canonical_adapter_config`). A failed write names ``out_dir``."""
    try:
        with atomic.output_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            canonical_adapter_config(tmp)
            tokenizer.save_pretrained(tmp)
            template.save(tmp)
            atomic.write_json(tmp / info_file, info)
    except OSError as e:  # safetensors and torch do not say which file a full disk refused
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(out_dir)) from None
