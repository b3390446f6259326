"""Batched greedy summary generation (training prompt, or the model's chat template).

Prompts are encoded with the same function as in training, sorted by length into
batches (little padding), left-padded (decoder-only models continue from the right
end), decoded from the new tokens only, and cut at the template's end marker.
Each sequence stops at one of the model's end tokens (its generation config's list, plus the
tokenizer's EOS) or at the end marker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sumlora.core.errors import DataError
from sumlora.prompt import PromptTemplate, template_for
from sumlora.tokenizing import encode_prompt


def end_token_ids(generation_config, tokenizer) -> list[int]:
    """The ids that end a summary: the model's own end tokens (its ``generation_config.eos_token_id``, one id
    or a list, e.g. an end-of-turn token beside EOS; None: none) plus the tokenizer's EOS."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                 stop_strings: list[str] | None = None, progress=None) -> list[list[int]]:
    """Greedy new token ids for each of the token-id ``prompts``, in input order, as ``generate`` returned
    them: a row that stopped (end token or stop string) is padded to its batch's width with the pad id."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    stop = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    eos = end_token_ids(getattr(model, "generation_config", None), tokenizer)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, padding_side="left", return_tensors="pt")
        input_ids, attention = batch["input_ids"], batch["attention_mask"]
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, use_cache=True, **stop)
        new_tokens = out[:, input_ids.shape[1]:].tolist()
        for row, i in enumerate(idx):
            results[i] = new_tokens[row]
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return results


def generate_texts(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                   stop_strings: list[str] | None = None, progress=None) -> list[str]:
    """Greedy continuations (new tokens only, special tokens dropped) of token-id ``prompts``, in order."""
    return [tokenizer.decode(ids, skip_special_tokens=True)
            for ids in generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens, stop_strings, progress)]


def check_fits(prompts: list[list[int]], ids: list[str] | None, max_new_tokens: int, context: int | None) -> None:
    """Refuse dialogues whose prompt plus ``max_new_tokens`` exceeds the model's context (the model would
    generate garbage past it), naming each one by ``ids`` (by position when None)."""
    if context is None:
        return
    ids = ids or [str(k) for k in range(len(prompts))]
    over = [(i, len(p)) for i, p in zip(ids, prompts) if len(p) + max_new_tokens > context]
    if over:
        raise DataError(f"{len(over)} dialogue(s) do not fit the model's context of {context} tokens with "
                        f"generate.max_new_tokens={max_new_tokens}: "
                        + ", ".join(f"{i} ({n} prompt tokens)" for i, n in over[:10])
                        + "; remove them from the input, or use a model with a longer context")


def summary_prompts(tokenizer, template: PromptTemplate, dialogues: list[str]) -> list[list[int]]:
    """The token ids generation feeds the model for ``dialogues`` (the training prompt)."""
    return [encode_prompt(tokenizer, template, d) for d in dialogues]


def generate_summaries(model, tokenizer, template: PromptTemplate, dialogues: list[str],
                       batch_size: int, max_new_tokens: int, progress=None, ids: list[str] | None = None,
                       context: int | None = None) -> list[str]:
    """Greedy summaries of ``dialogues`` with the training prompt, cut at the end marker, in input order.
    With ``context``, dialogues (named by ``ids``) too long for it are refused first (:func:`check_fits`)."""
    prompts = summary_prompts(tokenizer, template, dialogues)
    check_fits(prompts, ids, max_new_tokens, context)
    texts = generate_texts(model, tokenizer, prompts, batch_size, max_new_tokens, template.stop_strings(), progress)
    return [template.extract_summary(t) for t in texts]


def generate_chat_summaries(model, tokenizer, dialogues: list[str], batch_size: int, max_new_tokens: int,
                            progress=None, ids: list[str] | None = None, context: int | None = None) -> list[str]:
    """Zero-shot summaries through the tokenizer's chat template (the fair baseline for instruct models): the
    chat style's prompt, the one a model fine-tuned in that style is given."""
    return generate_summaries(model, tokenizer, template_for("chat"), dialogues, batch_size, max_new_tokens,
                              progress, ids, context)


@dataclass
class Row:
    """One summary to generate with :func:`generate_rows`: its prompt ids, its own cap on new tokens, extra stop
    strings (a request's ``stop``), and where to send the pieces of its text as they are decided (streaming)."""

    prompt: list[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None


@dataclass
class RowResult:
    text: str  # the summary: cut at the template's end marker or a stop string, stripped
    tokens: int  # new tokens generated, up to and including the one that ended it
    finish_reason: str  # "stop" (an end token, the end marker or a stop string) | "length" (its max_new_tokens)


class _Rows:
    """Follows each row of one ``generate`` call token by token (as its stopping criterion): ends a row at an end
    token, the end marker, one of its stop strings or its own token cap, and streams the part of its text that can
    no longer change. What is streamed, joined, is the final text: words are sent once whole (a later token can
    change how the last one decodes), nothing that might begin a stop string, no leading or trailing whitespace."""

    def __init__(self, tokenizer, template: PromptTemplate, rows: list[Row], prompt_len: int, eos: list[int]):
        self.tok, self.template, self.rows, self.start, self.eos = tokenizer, template, rows, prompt_len, set(eos)
        self.results: list[RowResult | None] = [None] * len(rows)
        self.sent = [""] * len(rows)

    def _cut(self, k: int, text: str) -> tuple[str, bool]:
        stops = [*self.template.stop_strings(), *self.rows[k].stop]
        at = [text.find(s) for s in stops if s and s in text]
        return (text[:min(at)], True) if at else (text, False)

    def _send(self, k: int, upto: str) -> None:
        if self.rows[k].on_text is not None and upto.startswith(self.sent[k]) and len(upto) > len(self.sent[k]):
            self.rows[k].on_text(upto[len(self.sent[k]):])
            self.sent[k] = upto

    def __call__(self, input_ids, scores=None, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for k, row in enumerate(self.rows):
            if self.results[k] is not None:
                done[k] = True
                continue
            new = input_ids[k, self.start:].tolist()
            text, stopped = self._cut(k, self.tok.decode(new, skip_special_tokens=True))
            if stopped or new[-1] in self.eos or len(new) >= row.max_new_tokens:
                reason = "length" if not stopped and new[-1] not in self.eos else "stop"
                self.results[k] = RowResult(text.strip(), len(new), reason)
                self._send(k, text.strip())
                done[k] = True
                continue
            stops = [*self.template.stop_strings(), *row.stop]
            hold = max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
            safe = text[:len(text) - hold].lstrip()
            if "\ufffd" not in safe:  # an incomplete character: wait for the rest of its bytes
                self._send(k, safe[:max(safe.rfind(" "), safe.rfind("\n"), 0)].rstrip())
        return done


@torch.inference_mode()
def generate_rows(model, tokenizer, template: PromptTemplate, rows: list[Row], sampling: dict | None = None,
                  ) -> list[RowResult]:
    """One batched ``generate`` call (left-padded) for ``rows``, each ending on its own terms (:class:`_Rows`): its
    own token cap and stop strings, besides the model's end tokens and the template's end marker. Greedy unless
    ``sampling`` (``temperature``, ``top_p``) is given. A greedy row's text is the one :func:`generate_summaries`
    gives for its prompt (the same tokens, cut at the same marker)."""
    device = next(model.parameters()).device
    batch = tokenizer.pad({"input_ids": [r.prompt for r in rows]}, padding_side="left", return_tensors="pt")
    from transformers import StoppingCriteriaList

    eos = end_token_ids(getattr(model, "generation_config", None), tokenizer)
    watch = _Rows(tokenizer, template, rows, batch["input_ids"].shape[1], eos)
    decoding = ({"do_sample": True, "temperature": sampling["temperature"], "top_p": sampling.get("top_p") or 1.0,
                 "top_k": None} if sampling else
                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   max_new_tokens=max(r.max_new_tokens for r in rows), num_beams=1, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=eos, use_cache=True, stopping_criteria=StoppingCriteriaList([watch]), **decoding)
    assert all(r is not None for r in watch.results)  # every step is checked, the last one too
    return watch.results
