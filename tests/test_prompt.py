"""One template renders the training prompt and the inference prompt identically."""

import json
import subprocess
import sys

from conftest import ROOT, read_rows

from sumlora.prompt import DEFAULT, PromptTemplate
from sumlora.tokenizing import IGNORE_INDEX, encode_example, encode_prompt


def test_training_prompt_is_inference_prompt_token_for_token(tiny_tokenizer, dialogsum_dir):
    for row in read_rows(dialogsum_dir / "train.jsonl", 20):
        ex = encode_example(tiny_tokenizer, DEFAULT, row["dialogue"], row["summary"])
        prompt_ids = encode_prompt(tiny_tokenizer, DEFAULT, row["dialogue"])
        assert ex["input_ids"][:len(prompt_ids)] == prompt_ids
        # the unmasked part starts exactly where the inference prompt ends
        first_label = next(i for i, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX)
        assert first_label == len(prompt_ids)


def test_format_stage_writes_the_prompt_generation_renders(tmp_path, dialogsum_dir):
    """The prompt stored by the format stage equals what generation renders from the dialogue."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    out = tmp_path / "formatted"
    subprocess.run([sys.executable, "-m", "stages.format_data", str(dialogsum_dir), str(out)], check=True,
                   cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 400
    for rec in train[:50]:
        assert rec["prompt"] == DEFAULT.render_prompt(rec["dialogue"])
        assert rec["response"] == DEFAULT.render_response(rec["summary"])
        assert rec["prompt"].endswith(DEFAULT.response_header + "\n")
    test = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert len(test) == 400 and all(len(r["references"]) == 3 for r in test)
    assert test[0]["prompt"] == DEFAULT.render_prompt(test[0]["dialogue"])


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
