"""GGUF export, checked by reading the files back with an independent reader: transformers' GGUF loader (which
de-quantizes with the gguf package and undoes llama.cpp's rotary order itself). The unquantized files give the
merged model's exact weights, tokens and summaries; Q8_0 stays within its quantization error."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from sumlora.prompt import DEFAULT

DIALOGUES = ["#Person1#: Shall we meet at noon?\n#Person2#: Yes, at the station.",
             "#Person1#: The printer is jammed again.\n#Person2#: I will call the technician."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_llama_dir):
    from transformers import GenerationConfig

    release = tmp_path_factory.mktemp("release")
    shutil.copytree(tiny_llama_dir, release / "merged")
    DEFAULT.save(release)
    GenerationConfig(max_new_tokens=12, do_sample=False).save_pretrained(release)
    (release / "release.json").write_text(json.dumps({"base": {"base_model": "org/tiny-llama"}}))
    out = release.parent / "gguf"
    proc = subprocess.run([sys.executable, "-m", "sumlora.export_gguf", str(release), str(out), "--types",
                           "f32,bf16,q8_0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return release, out


def load_gguf(out, kind, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = f"tiny-llama-dialogsum-{kind}.gguf"
    return (AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=dtype).eval(),
            AutoTokenizer.from_pretrained(out, gguf_file=name))


def summaries(model, tok):
    from sumlora.generation import generate_summaries

    return generate_summaries(model, tok, DEFAULT, DIALOGUES, batch_size=2, max_new_tokens=12)


def merged(release, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(release / "merged", dtype=dtype).eval(),
            AutoTokenizer.from_pretrained(release / "merged"))


@pytest.mark.parametrize("kind, dtype", [("f32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_unquantized_files_are_the_merged_model(exported, kind, dtype):
    release, out = exported
    ref, ref_tok = merged(release, dtype)
    model, tok = load_gguf(out, kind, dtype)
    want, got = ref.state_dict(), model.state_dict()
    assert set(got) == set(want)
    for key in want:  # q/k rows back in transformers' rotary order, every weight exact
        assert torch.equal(got[key], want[key]), key
    for d in DIALOGUES:
        assert tok(d)["input_ids"] == ref_tok(d)["input_ids"]
    assert summaries(model, tok) == summaries(ref, ref_tok)


def test_q8_0_stays_within_its_quantization_error(exported):
    release, out = exported
    ref, _ = merged(release, torch.float32)
    model, _ = load_gguf(out, "q8_0", torch.float32)
    want, got = ref.state_dict(), model.state_dict()
    changed = 0
    for key, w in want.items():
        if w.ndim == 1:
            assert torch.equal(got[key], w), key  # norms stay float32
            continue
        # Q8_0: blocks of 32, each value rounded to a step d = max|x| / 127, d stored as float16 (relative error
        # 2^-11, times up to 127 steps): |error| <= d / 2 + 127 d 2^-11 < 0.57 d
        blocks = w.reshape(-1, 32)
        bound = blocks.abs().amax(dim=1, keepdim=True) / 127 * 0.57 + 1e-7
        err = (got[key].reshape(-1, 32) - blocks).abs()
        assert (err <= bound).all(), key
        changed += int(not torch.equal(got[key], w))
    assert changed > 0  # really quantized


def test_the_modelfile_is_the_training_prompt_with_greedy_decoding(exported):
    _, out = exported
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./tiny-llama-dialogsum-q8_0.gguf\n")
    assert f'TEMPLATE """{DEFAULT.render_prompt("{{ .Prompt }}")}"""' in text
    assert 'PARAMETER stop "### End"' in text and "PARAMETER temperature 0" in text
    assert "PARAMETER num_predict 12" in text
    info = json.loads((out / "export.json").read_text())
    assert [f["type"] for f in info["files"]] == ["f32", "bf16", "q8_0"]


def test_a_release_without_a_merged_model_is_one_clear_error(tmp_path):
    (tmp_path / "release").mkdir()
    proc = subprocess.run([sys.executable, "-m", "sumlora.export_gguf", str(tmp_path / "release"),
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "no merged/ model" in proc.stderr and not (tmp_path / "out").exists()
