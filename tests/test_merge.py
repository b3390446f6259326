"""Merging base + adapter into a standalone model that plain transformers loads."""

import json
import re

import pytest
import torch

from sumlora.convert import materialize_base
from sumlora.core.params import load_params
from sumlora.generation import generate_summaries
from sumlora.merge import MERGE_INFO, main
from sumlora.modeling import load_model_and_tokenizer, read_base_info
from sumlora.prompt import DEFAULT

DIALOGUES = ["#Person1#: Are you coming tonight?\n#Person2#: Yes, I'll bring a cake.",
             "#Person1#: The train is late again.\n#Person2#: Let's take the bus to the office then.",
             "#Person1#: Can I pay by card?\n#Person2#: Sorry, cash only."]


@pytest.fixture(scope="module", params=["llama", "phi"])
def adapter(request, tmp_path_factory, tiny_llama_dir, tiny_phi_dir):
    from conftest import ROOT, save_nonzero_adapter

    root = tmp_path_factory.mktemp(f"merge-{request.param}")
    materialize_base(str(tiny_llama_dir if request.param == "llama" else tiny_phi_dir), root / "base")
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"]["compute_dtype"] = "float32"  # exact arithmetic: the equality checks below need it
    data["lora"]["target_modules"] = None  # each architecture's own default (params.yaml names Llama's layers)
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    params = load_params(root / "params.yaml")
    save_nonzero_adapter(root / "base", root / "adapter", params, DEFAULT)
    return root, params.model


def summaries(model, tok):
    return generate_summaries(model, tok, DEFAULT, DIALOGUES, batch_size=2, max_new_tokens=12)


def test_merged_model_loads_plainly_and_matches_base_plus_adapter(adapter, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, model_params = adapter
    assert model_params.load_in_4bit  # the default: the adapter was trained on a 4-bit base
    assert main([str(root / "merged"), "--adapter", str(root / "adapter"), "--base", str(root / "base"),
                 "--params", str(root / "params.yaml")]) == 0
    assert "de-quantized from 4-bit nf4" in capsys.readouterr().out

    files = {p.name for p in (root / "merged").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    assert not any(f.startswith("adapter_") for f in files)
    config = json.loads((root / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((root / "merged" / MERGE_INFO).read_text())["base_dequantized_from"] == "nf4"

    merged = AutoModelForCausalLM.from_pretrained(root / "merged").eval()  # plain: no peft, no 4-bit
    assert not any("lora" in n for n, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(root / "merged")
    with_adapter = summaries(*load_model_and_tokenizer(root / "base", model_params, root / "adapter"))
    assert summaries(merged, tok) == with_adapter
    base_only = summaries(*load_model_and_tokenizer(root / "base", model_params))
    assert base_only != with_adapter  # the adapter changes the output, so the comparison means something


def test_merge_refuses_a_missing_adapter_and_writes_nothing(adapter, tmp_path, capsys):
    root, _ = adapter
    out = tmp_path / "merged"
    assert main([str(out), "--adapter", str(tmp_path / "nope"), "--base", str(root / "base"),
                 "--params", str(root / "params.yaml")]) == 1
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


def test_merge_refuses_an_adapter_for_another_base(adapter, tmp_path, capsys, tiny_phi_dir, tiny_llama_dir):
    root, _ = adapter
    other = tmp_path / "other"
    src = tiny_phi_dir if read_base_info(root / "base")["model_type"] == "llama" else tiny_llama_dir
    materialize_base(str(src), other)
    assert main([str(tmp_path / "m"), "--adapter", str(root / "adapter"), "--base", str(other),
                 "--params", str(root / "params.yaml")]) == 1
    assert "was trained on base model" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()



def test_a_non_empty_output_directory_is_refused_unless_forced(adapter, tmp_path, capsys):
    root, _ = adapter
    out = tmp_path / "users-folder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["--adapter", str(root / "adapter"), "--base", str(root / "base"), "--params", str(root / "params.yaml")]
    assert main([str(out), *args]) == 1
    assert "a non-empty directory and this command did not write it" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main([str(out), *args, "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert main([str(out), *args]) == 0  # its own output (the marker says so) is replaced without --force


@pytest.mark.parametrize("where", ["parent of the adapter", "the adapter", "inside the adapter", "the base"])
def test_an_output_directory_that_is_or_holds_an_input_is_always_refused(adapter, where, capsys):
    root, _ = adapter
    out = {"parent of the adapter": root, "the adapter": root / "adapter",
           "inside the adapter": root / "adapter" / "merged", "the base": root / "base"}[where]
    before = sorted(str(p) for p in root.rglob("*"))
    code = main([str(out), "--adapter", str(root / "adapter"), "--base", str(root / "base"),
                 "--params", str(root / "params.yaml"), "--force"])
    assert code == 1 and re.search(r"it (is|holds|lies inside) the input --(adapter|base)", capsys.readouterr().err)
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing deleted or added


@pytest.mark.parametrize("disk, message", [("ro", "Read-only file system"), ("full", "No space left on device")])
def test_merge_onto_a_read_only_or_full_disk_is_one_line_and_leaves_nothing(adapter, small_disk, disk, message,
                                                                             capsys):
    """Read-only: refused before the model loads; full: the write fails, named, and no partial directory stays."""
    root, _ = adapter
    out = small_disk[disk] / "merged"
    code = main([str(out), "--adapter", str(root / "adapter"), "--base", str(root / "base"),
                 "--params", str(root / "params.yaml")])
    last = capsys.readouterr().err.splitlines()[-1]  # after the weights' loading bar, if the model loaded
    assert code == 1 and last.startswith("error: ") and str(out) in last and message in last, last
    assert list(small_disk[disk].iterdir()) == []


def test_generation_with_weights_dequantized_once_matches_the_4bit_path(adapter):
    """generate.dequantize: the base de-quantized once with the adapter merged in gives the summaries of the
    4-bit base + peft adapter (the path training computes with), without 4-bit or LoRA layers left."""
    root, model_params = adapter
    fast, tok = load_model_and_tokenizer(root / "base", model_params, root / "adapter", dequantize_to="float32")
    assert not any(type(p).__name__ == "Params4bit" for p in fast.parameters())
    assert not any("lora" in n for n, _ in fast.named_parameters())
    slow = load_model_and_tokenizer(root / "base", model_params, root / "adapter")
    assert any(type(p).__name__ == "Params4bit" for p in slow[0].parameters())
    assert summaries(fast, tok) == summaries(*slow)


def test_dequantize_auto_picks_bfloat16_only_on_a_cpu_with_native_bf16(monkeypatch):
    from sumlora.core.params import ModelParams
    from sumlora.modeling import resolve_dequantize

    four_bit, plain = ModelParams(compute_dtype="float32"), ModelParams(load_in_4bit=False)
    for native, gpu, expected in [(True, False, "bfloat16"), (False, False, None), (True, True, None)]:
        monkeypatch.setattr("sumlora.core.device.cpu_has_native_bf16", lambda native=native: native)
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        assert resolve_dequantize("auto", four_bit) == expected, (native, gpu)
        assert resolve_dequantize("float32", four_bit) == "float32" and resolve_dequantize("none", four_bit) is None
        assert all(resolve_dequantize(d, plain) is None for d in ("auto", "float32", "bfloat16"))  # not 4-bit
