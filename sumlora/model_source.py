"""The source of the base model (``model.name``), read without loading its weights.

- :func:`identity`: what DVC cannot see by itself: the bytes of a local model directory or of the embedded
  GGUF file, the id and revision of a hub model. The ``model_source`` stage writes it to a file that the
  ``base_model`` stage depends on, so new weights in a local directory rerun everything built on them.
- :func:`problems`: the params problems only the model can show (a local path that holds no model, a name
  that is no hub id, LoRA target modules the architecture lacks, ``tokenize.max_length`` above its context),
  found by the ``check_params`` stage before DVC removes any other stage's outputs. A hub model that is not
  in the local cache cannot be read offline: its checks run in the stages that load it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EMBEDDED = "embedded"


def looks_like_path(name: str) -> bool:
    """Whether ``model.name`` names a local path rather than a hub id (``org/model``)."""
    return (name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or "\\" in name
            or name.count("/") > 1)


def name_problem(name: str) -> str | None:
    """Why ``model.name`` cannot name a model: a missing local path, a path without a model, an invalid hub id."""
    if name == EMBEDDED:
        return None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return (f"model.name: {name!r} is a local path but holds no model (no config.json in it); point it at a "
                    "directory written by save_pretrained, a hub id such as microsoft/phi-2, or 'embedded'")
        return None
    if looks_like_path(name):
        return (f"model.name: {name!r} looks like a local path, but nothing is there (a typo?); point it at a model "
                "directory, a hub id such as microsoft/phi-2, or 'embedded'")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as e:
        return f"model.name: {name!r} is neither a local directory nor a valid hub id ({str(e).splitlines()[0]})"
    return None


def _tree_sha256(d: Path) -> str:
    from sumlora.modeling import sha256_file

    lines = [f"{f.relative_to(d).as_posix()}:{sha256_file(f)}\n" for f in sorted(p for p in d.rglob("*")
                                                                               if p.is_file())]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def identity(name: str, revision: str | None) -> dict:
    """What the base model is made from, as far as this machine can tell without the network."""
    if name == EMBEDDED:
        from sumlora.convert import EMBEDDED_PACKAGE, embedded_gguf_path
        from sumlora.core.device import package_version
        from sumlora.modeling import sha256_file

        gguf = embedded_gguf_path()
        return {"name": name, "package": f"{EMBEDDED_PACKAGE} {package_version(EMBEDDED_PACKAGE)}",
                "file": gguf.name, "sha256": sha256_file(gguf)}
    path = Path(name).expanduser()
    if path.is_dir():
        return {"name": name, "local_directory_sha256": _tree_sha256(path)}
    return {"name": name, "revision": revision}  # a hub model: pin model.revision to pin its weights


def config(name: str, revision: str | None, trust_remote_code: bool):
    """The model's transformers config, or None when it cannot be read here (a hub model not in the local cache)."""
    from transformers import AutoConfig

    if name == EMBEDDED:
        from sumlora.convert import embedded_gguf_path

        gguf = embedded_gguf_path()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code,
                                          local_files_only=True)
    except (OSError, ValueError):
        return None


def module_names(cfg) -> set[str]:
    """The module names (last dotted part) of a model built from ``cfg`` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}


def problems(params) -> list[str]:
    """Params problems that need the model's config (a check for :func:`sumlora.core.params.load_params`)."""
    from sumlora.modeling import model_max_positions

    m = params.model
    if problem := name_problem(m.name):
        return [problem]
    cfg = config(m.name, m.revision, m.trust_remote_code)
    if cfg is None:
        return []
    errs = []
    context = model_max_positions(cfg)
    cap = params.tokenize.max_length
    if cap is not None and context is not None and cap > context:
        errs.append(f"tokenize.max_length: {cap} is above the context length of {m.name} ({context} tokens); "
                    f"set it to at most {context}, or null")
    if params.lora.target_modules is not None:
        names = module_names(cfg)
        missing = [t for t in params.lora.target_modules if t not in names]
        if missing:
            linear = sorted(n for n in names if n.endswith(("proj", "dense", "fc1", "fc2", "c_attn", "c_proj")))
            errs.append(f"lora.target_modules: {missing} are not modules of {m.name} ({cfg.model_type}); "
                        f"its projections are {linear}")
    return errs
