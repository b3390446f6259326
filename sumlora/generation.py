"""Batched summary generation (training prompt, or the model's chat template): greedy, or beam search.

Prompts are encoded with the same function as in training, sorted by length into
batches (little padding), left-padded (decoder-only models continue from the right
end), decoded from the new tokens only, and cut at the template's end marker.
Each sequence stops at one of the model's end tokens (its generation config's list, plus the
tokenizer's EOS) or at the end marker. Greedy decoding batches continuously (:func:`generate_ids`);
beam search (``generate.num_beams`` > 1) is ``model.generate``'s, on static batches.
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


def _merge_caches(cache, mask, new_cache, new_mask):
    """One batch from two left-padded ones: each layer's keys and values, and the attention masks, padded on the
    left to the longer length (masked out), then stacked along the batch."""
    if cache is None:
        return new_cache, new_mask
    length = max(mask.shape[1], new_mask.shape[1])

    def left(t, dim_len, dim):
        pad = length - dim_len
        if pad == 0:
            return t
        shape = list(t.shape)
        shape[dim] = pad
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for old, new in zip(cache.layers, new_cache.layers):
        old.keys = torch.cat([left(old.keys, mask.shape[1], 2), left(new.keys, new_mask.shape[1], 2)])
        old.values = torch.cat([left(old.values, mask.shape[1], 2), left(new.values, new_mask.shape[1], 2)])
    return cache, torch.cat([left(mask, mask.shape[1], 1), left(new_mask, new_mask.shape[1], 1)])


@torch.inference_mode()
def beam_ids(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int, num_beams: int,
             length_penalty: float, stop_strings: list[str] | None = None, progress=None) -> list[list[int]]:
    """Beam search's new token ids for each of ``prompts``, in input order, up to and including the end token:
    ``model.generate(num_beams=..., length_penalty=..., early_stopping=True)`` on left-padded batches of
    ``batch_size`` prompts, longest first (the release card's batches). A hypothesis ends at an end token or a
    stop string; finished beams are ranked by their summed log-probability over length ** ``length_penalty``
    (> 1 favours longer summaries)."""
    device = next(model.parameters()).device
    eos = end_token_ids(getattr(model, "generation_config", None), tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        take = order[start:start + batch_size]
        batch = tokenizer.pad({"input_ids": [prompts[i] for i in take]}, padding_side="left", return_tensors="pt")
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                             early_stopping=True, do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
                             stop_strings=stop_strings or None, tokenizer=tokenizer if stop_strings else None)
        for row, i in enumerate(take):
            new = out[row, batch["input_ids"].shape[1]:].tolist()
            ends = [k for k, t in enumerate(new) if t in eos]
            results[i] = new[:ends[0] + 1] if ends else new  # after the end token: padding
        if progress:
            progress(start + len(take), len(prompts))
    return results


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                 stop_strings: list[str] | None = None, progress=None, num_beams: int = 1,
                 length_penalty: float = 1.0) -> list[list[int]]:
    """Greedy new token ids for each of the token-id ``prompts``, in input order, up to and including the token that
    ended it (an end token; or the one that completed a stop string, the text being cut there later).

    Continuous batching: at most ``batch_size`` rows decode together, one forward pass per new token for all of
    them; a row that ends leaves the batch at once (its keys and values dropped from the cache) and the next
    prompts, longest first, are prefilled and join it, so no pass is spent on finished rows. The greedy choice of
    each row is the one ``model.generate`` makes for it (float32: the same tokens; in bfloat16 the rounding can
    follow the batch's composition, which differs). With ``num_beams`` > 1: :func:`beam_ids`."""
    if num_beams > 1:
        return beam_ids(model, tokenizer, prompts, batch_size, max_new_tokens, num_beams, length_penalty,
                        stop_strings, progress)
    from transformers import DynamicCache

    device = next(model.parameters()).device
    eos = set(end_token_ids(getattr(model, "generation_config", None), tokenizer))
    pending = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))[::-1]  # pop() takes the longest
    results: list[list[int]] = [[] for _ in prompts]
    rows: list[int] = []  # prompt index of each row of the running batch
    cache = mask = logits = None
    finished = 0

    def ended(i: int) -> bool:
        new = results[i]
        if new[-1] in eos or len(new) >= max_new_tokens:
            return True
        tail = tokenizer.decode(new[-16:], skip_special_tokens=True)  # a stop string just completed ends here
        return any(s in tail for s in stop_strings or ())

    while pending or rows:
        if pending and len(rows) < batch_size:  # refill: prefill the next prompts, join them to the batch
            take = [pending.pop() for _ in range(min(batch_size - len(rows), len(pending)))]
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in take]}, padding_side="left",
                                  return_tensors="pt")
            new_mask = batch["attention_mask"].to(device)
            new_cache = DynamicCache()
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=new_mask,
                        position_ids=(new_mask.cumsum(-1) - 1).clamp(min=0), cache=new_cache,
                        use_cache=True, logits_to_keep=1)
            cache, mask = _merge_caches(cache, mask, new_cache, new_mask)
            logits = out.logits[:, -1] if logits is None else torch.cat([logits, out.logits[:, -1]])
            rows += take
        tokens = logits.argmax(-1)
        keep = []
        for j, i in enumerate(rows):
            results[i].append(int(tokens[j]))
            if not ended(i):
                keep.append(j)
        if len(keep) < len(rows):  # finished rows leave the batch
            finished += len(rows) - len(keep)
            index = torch.tensor(keep, device=device, dtype=torch.long)
            cache.batch_select_indices(index)
            rows, tokens, mask = [rows[j] for j in keep], tokens[index], mask[index]
            if progress:
                progress(finished, len(prompts))
        if not rows:
            cache = mask = logits = None
            continue
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1]
    return results


def generate_texts(model, tokenizer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                   stop_strings: list[str] | None = None, progress=None, **beams) -> list[str]:
    """Continuations (new tokens only, special tokens dropped) of token-id ``prompts``, in order: greedy, or beam
    search with ``num_beams`` and ``length_penalty`` (:func:`generate_ids`)."""
    return [tokenizer.decode(ids, skip_special_tokens=True)
            for ids in generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens, stop_strings, progress,
                                    **beams)]


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
                       context: int | None = None, num_beams: int = 1, length_penalty: float = 1.0) -> list[str]:
    """Summaries of ``dialogues`` with the training prompt, cut at the end marker, in input order: greedy, or beam
    search with ``num_beams`` > 1. With ``context``, dialogues (named by ``ids``) too long for it are refused first
    (:func:`check_fits`)."""
    prompts = summary_prompts(tokenizer, template, dialogues)
    check_fits(prompts, ids, max_new_tokens, context)
    texts = generate_texts(model, tokenizer, prompts, batch_size, max_new_tokens, template.stop_strings(), progress,
                           num_beams=num_beams, length_penalty=length_penalty)
    return [template.extract_summary(t) for t in texts]


def generate_chat_summaries(model, tokenizer, dialogues: list[str], batch_size: int, max_new_tokens: int,
                            progress=None, ids: list[str] | None = None, context: int | None = None,
                            **beams) -> list[str]:
    """Zero-shot summaries through the tokenizer's chat template (the fair baseline for instruct models): the
    chat style's prompt, the one a model fine-tuned in that style is given."""
    return generate_summaries(model, tokenizer, template_for("chat"), dialogues, batch_size, max_new_tokens,
                              progress, ids, context, **beams)


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
