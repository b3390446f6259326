"""The release's base reference and loading code for the bases the end-to-end tests do not build (a hub
model pinned to a commit, the embedded GGUF base), and for the chat prompt style. The release of a real
pipeline run is tested in tests/test_pipeline.py (its loading code run against the pipeline's summaries)."""

import pytest

from sumlora.prompt import PromptTemplate
from sumlora.release import base_reference, load_snippet, pinned

PHI2 = {"source": "microsoft/phi-2", "revision": "810d367871c1d460086d9f82db8696f2e0a0fcd0", "dtype": "float32"}
GPU_LOAD = {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16",
            "dequantize_to": None}


def test_base_reference_names_the_real_base():
    embedded = base_reference({"source": "embedded", "description": "de-quantized from GGUF Q4_1"})
    assert embedded == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": None, "hub": True,
                        "statement": "de-quantized from GGUF Q4_1"}
    hub = base_reference(PHI2)
    assert (hub["base_model"], hub["revision"], hub["hub"]) == ("microsoft/phi-2", PHI2["revision"], True)
    local = base_reference({"source": "/srv/models/mine"})
    assert (local["base_model"], local["revision"], local["hub"]) == ("/srv/models/mine", None, False)
    assert "local model directory /srv/models/mine" in local["statement"]


def test_loading_code_for_a_hub_base_pins_its_commit_and_keeps_4_bit():
    code = load_snippet(base_reference(PHI2), GPU_LOAD, PromptTemplate(), 32)
    compile(code, "card", "exec")
    assert 'base_path = "microsoft/phi-2"' in code and f'revision="{PHI2["revision"]}"' in code
    assert "bnb_4bit_compute_dtype=torch.bfloat16" in code and "BATCH = 32" in code
    assert "dequantize" not in code and "merge_and_unload" not in code  # 4-bit base + adapter, as generated


def test_loading_code_for_the_embedded_base_loads_this_repositorys_base():
    code = load_snippet(base_reference({"source": "embedded"}), {**GPU_LOAD, "dequantize_to": "bfloat16"},
                        PromptTemplate(), 8)
    compile(code, "card", "exec")
    assert 'base_path = "models/base"' in code and "revision=" not in code  # not the hub's bfloat16 weights
    assert "base.dequantize(dtype=torch.bfloat16)" in code and "merge_and_unload()" in code


def test_loading_code_for_the_chat_style_uses_the_chat_template_and_no_end_marker():
    code = load_snippet(base_reference(PHI2), GPU_LOAD, PromptTemplate(style="chat"), 8)
    compile(code, "card", "exec")
    assert "apply_chat_template" in code and "add_special_tokens=False" in code and "### End" not in code


def test_loading_code_with_a_merged_model_needs_plain_transformers_only():
    code = load_snippet(base_reference({"source": "embedded"}), {**GPU_LOAD, "dequantize_to": "bfloat16"},
                        PromptTemplate(), 8, merged=True)
    compile(code, "card", "exec")
    assert 'AutoModelForCausalLM.from_pretrained(release + "/merged")' in code
    assert "peft" not in code and "BitsAndBytes" not in code and "models/base" not in code


def test_the_install_line_pins_the_lock_files_versions(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("accelerate==1.0\nPEFT==0.1\ntorch==2.13.0\ntransformers==5.24.0\n")
    assert pinned(lock, ("torch", "transformers")) == "torch==2.13.0 transformers==5.24.0"
    with pytest.raises(ValueError, match="no pinned version of bitsandbytes"):
        pinned(lock, ("torch", "bitsandbytes"))
