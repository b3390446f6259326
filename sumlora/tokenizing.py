"""Prompt/response tokenization with label masking, and over-length filtering.

Prompt and response are tokenized separately and their ids concatenated, so the
boundary between them never depends on how the marker tokenizes in context.
Labels: -100 on the prompt (unless training on the prompt), the response tokens,
the end marker and EOS stay in the loss (pad == eos would otherwise hide EOS).
Dialogues and summaries are user text: a special-token string inside one (``<|im_end|>``) is encoded
as ordinary text, never as the special token, in both prompt styles (:func:`encode_plain`).
The chat style's response is the assistant reply as the tokenizer's chat template renders it
(the summary and its end-of-turn token), up to the whitespace the template puts after the turn.
"""

from __future__ import annotations

import random

from sumlora.prompt import PromptTemplate

IGNORE_INDEX = -100


def prompt_text(tokenizer, template: PromptTemplate, dialogue: str) -> str:
    """The prompt as text; the chat style's is the tokenizer's chat template up to the assistant's turn."""
    if not template.chat:
        return template.render_prompt(dialogue)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("format.prompt: chat needs a tokenizer with a chat template; this one has none "
                         "(use format.prompt: instruct)")
    return tokenizer.apply_chat_template(template.user_turn(dialogue), add_generation_prompt=True, tokenize=False)


SENTINEL = "\ue000sumlora-user-text\ue001"  # private-use characters: where a chat template puts the user's text


def encode_plain(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text`` read as text: a special-token string inside it (``<|im_end|>``) is encoded as the
    characters it is made of, never as the special token (user text cannot end a prompt or forge a turn)."""
    return tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]


def _added_token_pattern(tokenizer):
    import re

    tokens = sorted((t.content for t in tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def encode_around(tokenizer, before: str, user: str, after: str) -> list[int]:
    """Token ids of ``before + user + after`` where ``before`` and ``after`` (a template's rendering) may hold
    special tokens and ``user`` is plain text. The text between special tokens is tokenized in one piece, as the
    tokenizer itself does, so for user text without special-token strings the ids equal
    ``tokenizer(before + user + after)``; with them, those strings stay text."""
    pattern = _added_token_pattern(tokenizer)

    def pieces(text: str) -> list[tuple[str, bool]]:  # (text, is an added token)
        if pattern is None:
            return [(text, False)] if text else []
        out, pos = [], 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                out.append((text[pos:m.start()], False))
            out.append((m.group(), True))
            pos = m.end()
        return out + ([(text[pos:], False)] if pos < len(text) else [])

    head, tail = pieces(before), pieces(after)
    middle = user
    if head and not head[-1][1]:
        middle = head.pop()[0] + middle
    if tail and not tail[0][1]:
        middle = middle + tail.pop(0)[0]
    ids = []
    for text, special in head:
        ids += tokenizer.convert_tokens_to_ids([text]) if special else encode_plain(tokenizer, text)
    ids += encode_plain(tokenizer, middle)
    for text, special in tail:
        ids += tokenizer.convert_tokens_to_ids([text]) if special else encode_plain(tokenizer, text)
    return ids


def _chat_around(tokenizer, template: PromptTemplate, conversation_tail: list[dict] | None = None,
                 add_generation_prompt: bool = True) -> tuple[str, str]:
    """The chat template's rendering before and after the user's message (found with a placeholder)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("format.prompt: chat needs a tokenizer with a chat template; this one has none "
                         "(use format.prompt: instruct)")
    turn = [{"role": "user", "content": SENTINEL}] + (conversation_tail or [])
    rendered = tokenizer.apply_chat_template(turn, add_generation_prompt=add_generation_prompt, tokenize=False)
    if rendered.count(SENTINEL) != 1:
        raise ValueError("the tokenizer's chat template does not show the user's message exactly once; "
                         "use format.prompt: instruct")
    before, after = rendered.split(SENTINEL)
    return before, after


def encode_prompt(tokenizer, template: PromptTemplate, dialogue: str) -> list[int]:
    """Token ids of the prompt: the same call at training time and at generation time. The dialogue is plain
    text (:func:`encode_plain`). A chat template writes its own special tokens (e.g. BOS), so none are added."""
    if not template.chat:
        return encode_plain(tokenizer, template.render_prompt(dialogue), add_special_tokens=True)
    before, after = _chat_around(tokenizer, template)
    return encode_around(tokenizer, before, template.user_turn(dialogue)[0]["content"], after)


def encode_response(tokenizer, template: PromptTemplate, dialogue: str, summary: str) -> list[int]:
    """Token ids of the training target, ending with a token that stops generation. The summary is plain text."""
    if not template.chat:
        return encode_plain(tokenizer, template.render_response(summary)) + [tokenizer.eos_token_id]
    prompt = prompt_text(tokenizer, template, dialogue)
    whole = tokenizer.apply_chat_template(template.user_turn(dialogue) + [
        {"role": "assistant", "content": summary.strip()}], tokenize=False)
    if not whole.startswith(prompt) or not whole[len(prompt):].startswith(summary.strip()):
        raise ValueError("the tokenizer's chat template renders the conversation before the reply differently "
                         "with and without the reply; use format.prompt: instruct")
    after = whole[len(prompt) + len(summary.strip()):].rstrip()
    ids = encode_around(tokenizer, "", summary.strip(), after)
    return ids if ids[-1] in tokenizer.all_special_ids else ids + [tokenizer.eos_token_id]


def encode_example(tokenizer, template: PromptTemplate, dialogue: str, summary: str,
                   train_on_prompt: bool = False) -> dict:
    """``{input_ids, labels}`` for one training row."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could not learn to stop")
    prompt = encode_prompt(tokenizer, template, dialogue)
    response = encode_response(tokenizer, template, dialogue, summary)
    labels = (list(prompt) if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + list(response)
    return {"input_ids": list(prompt) + response, "labels": labels}


def max_length(model_limit: int | None, cap: int | None) -> int:
    """The effective maximum sequence length: the model's context, capped by the param."""
    if cap is not None and model_limit is not None and cap > model_limit:
        raise ValueError(f"tokenize.max_length: {cap} is above the model's context length {model_limit}")
    if cap is None and model_limit is None:
        raise ValueError("tokenize.max_length: the model config states no context length; set this param")
    return cap if cap is not None else model_limit


def tokenize_rows(rows: list[dict], tokenizer, template: PromptTemplate, limit: int,
                  train_on_prompt: bool, seed: int) -> tuple[list[dict], dict]:
    """Encode, drop rows longer than ``limit`` tokens, shuffle with ``seed``. Returns (rows, counts)."""
    kept, lengths, dropped, shortest = [], [], 0, None
    for row in rows:
        ex = encode_example(tokenizer, template, row["dialogue"], row["summary"], train_on_prompt)
        n = len(ex["input_ids"])
        shortest = n if shortest is None else min(shortest, n)
        if n > limit:
            dropped += 1
            continue
        if not any(label != IGNORE_INDEX for label in ex["labels"]):
            raise AssertionError(f"row {row['id']}: every label is masked")
        kept.append({"id": row["id"], **ex})
        lengths.append(len(ex["input_ids"]))
    random.Random(seed).shuffle(kept)
    counts = {"rows": len(rows), "kept": len(kept), "dropped_over_length": dropped,
              "tokens": sum(lengths), "max_tokens": max(lengths, default=0), "shortest_row_tokens": shortest,
              "mean_tokens": round(sum(lengths) / len(lengths), 2) if lengths else 0.0}
    return kept, counts
