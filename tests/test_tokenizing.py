"""Label masking and over-length filtering."""

import pytest
from conftest import read_rows

from sumlora.prompt import DEFAULT
from sumlora.tokenizing import IGNORE_INDEX, encode_example, encode_prompt, max_length, tokenize_rows


def test_prompt_masked_eos_kept(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the case that hides EOS in the tutorial
    ex = encode_example(tok, DEFAULT, "#Person1#: Hi.\n#Person2#: Hello.", "They greet.")
    n_prompt = len(encode_prompt(tok, DEFAULT, "#Person1#: Hi.\n#Person2#: Hello."))
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][-1] == tok.eos_token_id
    # the end marker is in the loss
    response = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
    assert response.startswith("They greet.") and DEFAULT.end_marker in response


def test_train_on_prompt_keeps_every_label(tiny_tokenizer):
    ex = encode_example(tiny_tokenizer, DEFAULT, "A: x\nB: y", "S.", train_on_prompt=True)
    assert ex["labels"] == ex["input_ids"]


def test_every_kept_row_has_unmasked_labels_and_overlength_rows_are_dropped(tiny_tokenizer, dialogsum_dir):
    rows = read_rows(dialogsum_dir / "train.jsonl", 60)
    lengths = sorted(len(encode_example(tiny_tokenizer, DEFAULT, r["dialogue"], r["summary"])["input_ids"])
                     for r in rows)
    limit = lengths[40]  # rows strictly longer than the 41st shortest are dropped
    expected_dropped = sum(1 for n in lengths if n > limit)
    kept, counts = tokenize_rows(rows, tiny_tokenizer, DEFAULT, limit, False, seed=1)
    assert counts["rows"] == 60
    assert counts["dropped_over_length"] == expected_dropped > 0
    assert counts["kept"] == len(kept) == 60 - expected_dropped
    assert counts["tokens"] == sum(len(r["input_ids"]) for r in kept)
    for r in kept:
        assert len(r["input_ids"]) <= limit
        assert any(label != IGNORE_INDEX for label in r["labels"])
        assert r["labels"][-1] == tiny_tokenizer.eos_token_id


def test_shuffle_is_seeded(tiny_tokenizer, dialogsum_dir):
    rows = read_rows(dialogsum_dir / "train.jsonl", 30)
    a, _ = tokenize_rows(rows, tiny_tokenizer, DEFAULT, 10_000, False, seed=7)
    b, _ = tokenize_rows(rows, tiny_tokenizer, DEFAULT, 10_000, False, seed=7)
    c, _ = tokenize_rows(rows, tiny_tokenizer, DEFAULT, 10_000, False, seed=8)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["id"] for r in a] != [r["id"] for r in c]
    assert sorted(r["id"] for r in a) == sorted(r["id"] for r in rows)


def test_max_length_from_model_capped_by_param():
    assert max_length(2048, None) == 2048
    assert max_length(2048, 512) == 512
    with pytest.raises(ValueError, match="above the model's context length 2048"):
        max_length(2048, 4096)
    with pytest.raises(ValueError, match="no context length"):
        max_length(None, None)


def test_chat_style_labels_cover_exactly_the_reply_and_its_end_of_turn(tiny_tokenizer):
    """format.prompt: chat: the prompt is the chat template up to the assistant's turn (written out here by hand),
    and the loss covers the summary and the end-of-turn token, not the newline the template writes after it."""
    from sumlora.prompt import template_for

    tok, chat = tiny_tokenizer, template_for("chat")
    dialogue, summary = "#Person1#: Hi.\n#Person2#: Hello. ", " They greet. "
    ex = encode_example(tok, chat, dialogue, summary)
    prompt = encode_prompt(tok, chat, dialogue)
    assert tok.decode(prompt) == ("<|im_start|>user\nSummarize the following conversation in one or two sentences."
                                  "\n\n#Person1#: Hi.\n#Person2#: Hello.<|im_end|>\n<|im_start|>assistant\n")
    assert ex["input_ids"][:len(prompt)] == prompt and ex["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)
    reply = ex["input_ids"][len(prompt):]
    assert ex["labels"][len(prompt):] == reply and tok.decode(reply) == "They greet.<|im_end|>"
    assert reply[-1] == tok.eos_token_id


def test_chat_style_needs_a_chat_template(tiny_tokenizer):
    import copy

    from sumlora.prompt import template_for

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="format.prompt: chat needs a tokenizer with a chat template"):
        encode_example(tok, template_for("chat"), "A: x", "S.")
