"""Prompt/response tokenization with label masking, and over-length filtering.

Prompt and response are tokenized separately and their ids concatenated, so the
boundary between them never depends on how the marker tokenizes in context.
Labels: -100 on the prompt (unless training on the prompt), the response tokens,
the end marker and EOS stay in the loss (pad == eos would otherwise hide EOS).
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


def encode_prompt(tokenizer, template: PromptTemplate, dialogue: str) -> list[int]:
    """Token ids of the prompt: the same call at training time and at generation time. A chat template
    writes its own special tokens (e.g. BOS), so none are added to it."""
    return tokenizer(prompt_text(tokenizer, template, dialogue), add_special_tokens=not template.chat)["input_ids"]


def encode_response(tokenizer, template: PromptTemplate, dialogue: str, summary: str) -> list[int]:
    """Token ids of the training target, ending with a token that stops generation."""
    if not template.chat:
        return tokenizer(template.render_response(summary), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id]
    prompt = prompt_text(tokenizer, template, dialogue)
    whole = tokenizer.apply_chat_template(template.user_turn(dialogue) + [
        {"role": "assistant", "content": summary.strip()}], tokenize=False)
    if not whole.startswith(prompt):
        raise ValueError("the tokenizer's chat template renders the conversation before the reply differently "
                         "with and without the reply; use format.prompt: instruct")
    ids = tokenizer(whole[len(prompt):].rstrip(), add_special_tokens=False)["input_ids"]
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
