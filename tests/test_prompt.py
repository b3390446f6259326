"""One template renders the training prompt and the inference prompt identically."""

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import ROOT, build_phi_style_tokenizer, build_tiny_model, read_rows
from project import check_training_rows_match_generation_prompts, dvc, make_project, read_json

from sumlora.prompt import DEFAULT, PromptTemplate


@pytest.mark.slow
def test_training_rows_are_generation_prompts_token_for_token_phi_style(tmp_path_factory, dialogsum_dir):
    """Through the real stages (format, base_model, tokenize, train) on a tiny Phi with a Phi-2-style tokenizer:
    each tokenized training row starts with exactly the prompt the generate stage builds from the template
    saved beside the adapter. (The real SmolLM2 tokenizer: tests/test_embedded.py.)"""
    rows = read_rows(dialogsum_dir / "train.jsonl", 200)
    tok = build_phi_style_tokenizer([r["dialogue"] + "\n" + r["summary"] for r in rows])
    model_dir = build_tiny_model("phi", tok, tmp_path_factory.mktemp("tiny-phi-style"))
    proj = make_project(tmp_path_factory.mktemp("prompt"), dialogsum_dir, model_dir)
    dvc(proj, "repro", "train")
    kept = read_json(proj / "metrics/data.json")["train"]["kept"]
    assert kept > 0 and check_training_rows_match_generation_prompts(
        proj / "data/tokenized/train.jsonl", proj / "data/formatted/train.jsonl", proj / "models/adapter",
        proj / "models/base") == kept


def test_format_stage_writes_records_without_a_rendered_prompt(tmp_path, dialogsum_dir):
    """The format stage renders no prompt (the tokenize stage does, and records its template): its records
    hold only the fields later stages read."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = tmp_path / "formatted"
    subprocess.run([sys.executable, "-m", "stages.format_data", str(dialogsum_dir), str(out)], check=True,
                   cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 398  # 400 rows, 2 of them repeat an earlier training dialogue
    assert all(set(rec) == {"id", "dialogue", "summary"} for rec in train)
    test = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert len(test) == 396 and all(len(r["references"]) == 3 for r in test)  # 3 repeat dev, 1 test dialogues
    assert all(set(rec) == {"id", "dialogue", "references"} for rec in test)


def test_extract_summary_cuts_at_end_marker():
    t = DEFAULT
    assert t.extract_summary(" Tom buys a car.\n### End\n### Instruct: more") == "Tom buys a car."
    assert t.extract_summary("no marker at all ") == "no marker at all"
    assert t.extract_summary(t.render_response("A summary.")) == "A summary."


def test_template_saved_beside_adapter_round_trips(tmp_path):
    custom = PromptTemplate(intro="Intro.", end_marker="<END>")
    custom.save(tmp_path)
    assert PromptTemplate.load(tmp_path) == custom
    assert PromptTemplate.load(tmp_path) != DEFAULT


@pytest.mark.slow
def test_chat_style_travels_from_tokenize_to_the_adapter_and_generation(tmp_path, dialogsum_dir, tiny_llama_dir):
    """format.prompt: chat through the real stages: the tokenize stage records the chat template style, the
    adapter carries it, and each training row starts with the prompt generation builds from it."""
    from project import set_params

    from sumlora.generation import summary_prompts
    from sumlora.modeling import load_tokenizer

    proj = make_project(tmp_path / "chat", dialogsum_dir, tiny_llama_dir)
    set_params(proj, {"format.prompt": "chat"})
    dvc(proj, "repro", "train")
    template = PromptTemplate.load(proj / "models/adapter")
    assert template.style == "chat" and PromptTemplate.load(proj / "data/tokenized").style == "chat"
    tok = load_tokenizer(proj / "models/base")
    by_id = {r["id"]: r for r in map(json.loads, (proj / "data/formatted/train.jsonl").read_text().splitlines())}
    rows = [json.loads(x) for x in (proj / "data/tokenized/train.jsonl").read_text().splitlines()]
    prompts = summary_prompts(tok, template, [by_id[r["id"]]["dialogue"] for r in rows])
    for row, prompt in zip(rows, prompts):
        assert row["input_ids"][:len(prompt)] == prompt
        assert tok.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert tok.decode(row["input_ids"][len(prompt):]) == by_id[row["id"]]["summary"].strip() + "<|im_end|>"


def test_a_template_written_before_the_chat_style_loads_as_instruct(tmp_path):
    old = {k: v for k, v in dataclasses.asdict(DEFAULT).items() if k not in ("style", "user_message")}
    (tmp_path / "prompt_template.json").write_text(json.dumps(old))
    assert PromptTemplate.load(tmp_path) == DEFAULT
