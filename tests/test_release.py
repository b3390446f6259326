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


RUN = {"adapter": True, "compute_dtype": "float32", "dequantize_to": "float32", "num_beams": 3, "length_penalty": 2.0,
       "batch_size": 2, "max_new_tokens": 9}


def test_the_release_reads_the_generate_stages_run_record_and_refuses_another_file(tmp_path):
    import json

    from sumlora.core.errors import DataError
    from sumlora.release import read_run_record

    path = tmp_path / "finetuned.json"
    path.write_text(json.dumps(RUN))
    assert read_run_record(path) == RUN
    path.write_text(json.dumps({k: v for k, v in RUN.items() if k != "num_beams"}))
    with pytest.raises(DataError, match="finetuned.json: not a generate stage's run record .missing num_beams"):
        read_run_record(path)
    path.write_text(json.dumps({**RUN, "adapter": False}))
    with pytest.raises(DataError, match="the base model's summaries"):
        read_run_record(path)


def test_the_release_generation_config_decodes_as_the_stage_did_with_beams(tiny_llama_dir, dialogsum_dir):
    """A run record of beam search: transformers' generate with the release's GenerationConfig, in the card's
    batches, gives the summaries the generate stage's beam search gave (float32)."""
    import torch
    from conftest import read_rows

    from sumlora.core.params import ModelParams
    from sumlora.generation import generate_summaries
    from sumlora.modeling import load_model_and_tokenizer
    from sumlora.release import generation_config
    from sumlora.tokenizing import encode_prompt

    model, tok = load_model_and_tokenizer(tiny_llama_dir, ModelParams(load_in_4bit=False, compute_dtype="float32"))
    template = PromptTemplate(end_marker="<never emitted>")
    dialogues = [r["dialogue"][: 100 + 60 * i] for i, r in enumerate(read_rows(dialogsum_dir / "test.jsonl", 4))]
    config = generation_config(tiny_llama_dir, tok, template, {**RUN, "length_penalty": -2.0})
    assert (config.num_beams, config.length_penalty, config.max_new_tokens) == (3, -2.0, 9)
    stage = generate_summaries(model, tok, template, dialogues, RUN["batch_size"], RUN["max_new_tokens"],
                               num_beams=3, length_penalty=-2.0)
    ids = [encode_prompt(tok, template, d) for d in dialogues]
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))  # the card's batches
    card = [None] * len(ids)
    for start in range(0, len(order), RUN["batch_size"]):
        rows = order[start:start + RUN["batch_size"]]
        batch = tok.pad({"input_ids": [ids[i] for i in rows]}, padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, generation_config=config, tokenizer=tok)
        for row, i in enumerate(rows):
            card[i] = template.extract_summary(tok.decode(out[row, batch["input_ids"].shape[1]:],
                                                          skip_special_tokens=True))
    assert card == stage
    greedy = generate_summaries(model, tok, template, dialogues, RUN["batch_size"], RUN["max_new_tokens"])
    assert greedy != stage  # beams were applied on both sides
