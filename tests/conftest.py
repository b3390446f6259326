"""Shared fixtures: offline environment, DialogSum rows from ../shared, tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIALOGSUM_DIR", ROOT.parent / "shared" / "dialogsum"))

EOS = "<|im_end|>"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def dialogsum_dir() -> Path:
    if not (SHARED_DATA / "train.jsonl").is_file():
        pytest.fail(f"DialogSum rows not found at {SHARED_DATA} (set DIALOGSUM_DIR)")
    return SHARED_DATA


def read_rows(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n] if n else rows


def build_tokenizer(texts: list[str], vocab_size: int = 1000):
    """A byte-level BPE tokenizer trained on ``texts``, with pad == eos as in SmolLM2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<|im_start|>", EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token=EOS, bos_token="<|im_start|>",
                                  unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_phi_style_tokenizer(texts: list[str], vocab_size: int = 1000):
    """Shaped like Phi-2's tokenizer (no real one is available offline): GPT-2 byte-level BPE,
    ``<|endoftext|>`` as BOS, EOS and UNK, no BOS added, no pad token, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=end, bos_token=end, unk_token=end)


def build_tiny_model(arch: str, tokenizer, out_dir: Path) -> Path:
    """Save a randomly initialised tiny Llama or Phi causal LM (safetensors) + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, PhiConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    if arch == "llama":
        cfg = LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common)
    elif arch == "phi":
        cfg = PhiConfig(partial_rotary_factor=0.5, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(dialogsum_dir):
    rows = read_rows(dialogsum_dir / "train.jsonl", 200)
    return build_tokenizer([r["dialogue"] + "\n" + r["summary"] for r in rows])


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tiny_model("llama", tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_phi_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return build_tiny_model("phi", tiny_tokenizer, tmp_path_factory.mktemp("tiny-phi"))


@pytest.fixture()
def params():
    """The committed params.yaml, validated."""
    from sumlora.core.params import load_params

    return load_params(ROOT / "params.yaml")


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 KiB tmpfs, and a read-only one (mounting needs root; skipped otherwise)."""
    mounts = {"full": tmp_path / "full", "ro": tmp_path / "ro"}
    for name, opts in (("full", "size=4k"), ("ro", "ro,size=4k")):
        mounts[name].mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mounts[name])],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root): the disk-full and read-only cases are not run")
    yield mounts
    for m in mounts.values():
        subprocess.run(["umount", str(m)], capture_output=True)


def save_nonzero_adapter(base_dir: Path, out_dir: Path, params, template=None) -> None:
    """A LoRA adapter on ``base_dir`` whose update is not zero (a fresh LoRA B is zero, so an adapter straight from
    initialisation changes nothing and a test could not tell whether it was applied), with its template and
    adapter_info.json, as the train stage writes them."""
    import torch

    from sumlora.lora import prepare_qlora_model
    from sumlora.modeling import write_adapter_info
    from sumlora.prompt import PromptTemplate

    model, _ = prepare_qlora_model(base_dir, params)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(out_dir)
    (template or PromptTemplate()).save(out_dir)
    write_adapter_info(out_dir, base_dir)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory, tiny_llama_dir) -> Path:
    """A directory with ``base`` (the tiny Llama as the base_model stage writes it), ``adapter`` (a LoRA adapter on
    it with non-zero weights and the default template) and ``params.yaml`` (generation: float32 weights, 8 new
    tokens)."""
    import yaml

    from sumlora.convert import materialize_base
    from sumlora.core.params import load_params

    root = tmp_path_factory.mktemp("tiny-release")
    materialize_base(str(tiny_llama_dir), root / "base")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["generate"].update(dequantize="float32", max_new_tokens=8)  # float32: batching changes no greedy choice
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    save_nonzero_adapter(root / "base", root / "adapter", load_params(root / "params.yaml"))
    return root
