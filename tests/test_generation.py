"""Batched generation: left padding gives the same greedy output as one at a time, in input order."""

import pytest
import torch
from conftest import read_rows

from sumlora.generation import generate_summaries
from sumlora.modeling import load_model_and_tokenizer
from sumlora.prompt import DEFAULT, PromptTemplate


@pytest.fixture(scope="module")
def fp32_llama(tiny_llama_dir):
    from sumlora.params import ModelParams

    return load_model_and_tokenizer(tiny_llama_dir, ModelParams(load_in_4bit=False))


def test_batched_equals_one_at_a_time(fp32_llama, dialogsum_dir):
    model, tok = fp32_llama
    # dialogues of different lengths, so batches need padding
    dialogues = [r["dialogue"][: 150 + 90 * i] for i, r in enumerate(read_rows(dialogsum_dir / "test.jsonl", 5))]
    template = PromptTemplate(end_marker="<never emitted>")
    batched = generate_summaries(model, tok, template, dialogues, batch_size=5, max_new_tokens=12)
    single = [generate_summaries(model, tok, template, [d], batch_size=1, max_new_tokens=12)[0]
              for d in dialogues]
    assert batched == single
    assert all(isinstance(s, str) and s for s in batched)


def test_only_new_tokens_are_decoded_and_cut_at_end_marker(fp32_llama):
    model, tok = fp32_llama
    [text] = generate_summaries(model, tok, PromptTemplate(end_marker="<never emitted>"),
                                ["#Person1#: Hello."], 1, 8)
    assert "### Output:" not in text and "#Person1#: Hello." not in text
    # pick the first generated word as the end marker: the summary is cut before it
    first_word = text.split()[0]
    [cut] = generate_summaries(model, tok, PromptTemplate(end_marker=first_word), ["#Person1#: Hello."], 1, 8)
    assert first_word not in cut and len(cut) < len(text)


def test_generation_stops_at_eos(fp32_llama):
    """A model whose most likely next token is always EOS yields an empty summary."""
    model, tok = fp32_llama
    with torch.no_grad():
        bias = torch.full((model.config.vocab_size,), -1e4)
        bias[tok.eos_token_id] = 1e4
        model.lm_head.bias = torch.nn.Parameter(bias)
        try:
            [text] = generate_summaries(model, tok, DEFAULT, ["#Person1#: Hello."], 1, 20)
        finally:
            model.lm_head.bias = None
    assert text == ""
