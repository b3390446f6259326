"""Batched generation: left padding gives the same greedy output as one at a time, in input order."""

import pytest
import torch
from conftest import read_rows

from sumlora.generation import generate_ids, generate_summaries
from sumlora.modeling import load_model_and_tokenizer
from sumlora.prompt import DEFAULT, PromptTemplate
from sumlora.tokenizing import encode_prompt


@pytest.fixture(scope="module")
def fp32_llama(tiny_llama_dir):
    from sumlora.core.params import ModelParams

    return load_model_and_tokenizer(tiny_llama_dir, ModelParams(load_in_4bit=False, compute_dtype="float32"))


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


class always_emits:
    """The model's most likely next token is always ``token_id`` (a bias on the LM head)."""

    def __init__(self, model, token_id: int):
        self.model, self.token_id = model, token_id

    def __enter__(self):
        bias = torch.full((self.model.config.vocab_size,), -1e4)
        bias[self.token_id] = 1e4
        self.model.lm_head.bias = torch.nn.Parameter(bias)

    def __exit__(self, *exc):
        self.model.lm_head.bias = None


def test_generation_stops_at_eos(fp32_llama):
    """A model whose most likely next token is always EOS generates exactly one token, then stops."""
    model, tok = fp32_llama
    prompt = encode_prompt(tok, DEFAULT, "#Person1#: Hello.")
    with always_emits(model, tok.eos_token_id):
        [ids] = generate_ids(model, tok, [prompt], 1, 20)
        [text] = generate_summaries(model, tok, DEFAULT, ["#Person1#: Hello."], 1, 20)
    assert ids == [tok.eos_token_id]
    assert text == ""


def test_the_models_own_end_tokens_stop_generation(fp32_llama):
    """An end-of-turn token listed in the model's generation config (not the tokenizer's EOS) stops it too."""
    model, tok = fp32_llama
    end_of_turn = tok.convert_tokens_to_ids("<|im_start|>")
    assert end_of_turn != tok.eos_token_id
    prompt = encode_prompt(tok, DEFAULT, "#Person1#: Hello.")
    saved = model.generation_config.eos_token_id
    try:
        with always_emits(model, end_of_turn):
            [free] = generate_ids(model, tok, [prompt], 1, 6)
            model.generation_config.eos_token_id = [tok.eos_token_id, end_of_turn]
            [ids] = generate_ids(model, tok, [prompt], 1, 6)
    finally:
        model.generation_config.eos_token_id = saved
    assert free == [end_of_turn] * 6  # not an end token: runs to max_new_tokens
    assert ids == [end_of_turn]


def test_a_stop_string_stops_one_sequence_while_the_batch_goes_on(fp32_llama, dialogsum_dir):
    model, tok = fp32_llama
    n = 16
    prompts = [encode_prompt(tok, DEFAULT, r["dialogue"]) for r in read_rows(dialogsum_dir / "test.jsonl", 30)[::3]]
    free = generate_ids(model, tok, prompts, len(prompts), n)
    assert all(len(ids) == n or ids[-1] == tok.eos_token_id for ids in free)  # the cap, or the end token
    texts = [tok.decode(ids) for ids in free]
    # a stop string that the first sequence emits early and no other sequence emits at all
    a, stop = next((a, tok.decode(free[a][:2])) for a in range(len(free))
                   if tok.decode(free[a][:2]).strip() and all(tok.decode(free[a][:2]) not in t
                                                              for b, t in enumerate(texts) if b != a))
    k = next(j for j in range(1, n + 1) if stop in tok.decode(free[a][:j]))  # tokens up to the stop string
    stopped = generate_ids(model, tok, prompts, len(prompts), n, stop_strings=[stop])
    assert stopped[a] == free[a][:k]  # stopped there, and left the batch
    assert [ids for b, ids in enumerate(stopped) if b != a] == [ids for b, ids in enumerate(free) if b != a]


def test_continuous_batching_gives_what_generate_gives_each_dialogue(fp32_llama, dialogsum_dir):
    """generate_ids decodes at most batch_size rows together; rows that end leave the batch and the next prompts
    join it. Against transformers' own generate, one dialogue at a time with the same stop string (an independent
    path): the same tokens for every dialogue, up to where generate stopped. The stop string is a word the outputs
    contain, so rows end at different steps and the batch is refilled several times."""
    model, tok = fp32_llama
    dialogues = [r["dialogue"][: 120 + 70 * (i % 4)] for i, r in enumerate(read_rows(dialogsum_dir / "test.jsonl", 9))]
    prompts = [encode_prompt(tok, DEFAULT, d) for d in dialogues]
    free = generate_ids(model, tok, prompts, 3, 24)
    texts = [tok.decode(ids) for ids in free]
    in_how_many = {w: sum(w in t for t in texts) for t in texts for w in t.split()}
    stop = max((w for w, n in in_how_many.items() if n < len(texts)), key=in_how_many.get)  # in most, not all
    eos = [tok.eos_token_id]
    reference = []
    for p in prompts:
        out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=24, do_sample=False, stop_strings=[stop], tokenizer=tok,
                             eos_token_id=eos, pad_token_id=tok.pad_token_id)
        reference.append(out[0, len(p):].tolist())
    ours = generate_ids(model, tok, prompts, 3, 24, stop_strings=[stop])
    assert [len(r) for r in reference] != [24] * len(reference)  # some rows stopped early
    assert all(len(r) == 24 or stop in tok.decode(r) for r in reference)
    assert ours == reference


def transformers_beams(model, tok, template, dialogue: str, num_beams: int, length_penalty: float, new: int) -> str:
    """One dialogue through transformers' own beam search, alone (no padding), cut at the end marker."""
    from sumlora.generation import end_token_ids

    ids = torch.tensor([encode_prompt(tok, template, dialogue)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         num_beams=num_beams, length_penalty=length_penalty, early_stopping=True, do_sample=False,
                         eos_token_id=end_token_ids(model.generation_config, tok), pad_token_id=tok.pad_token_id)
    return template.extract_summary(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def test_beam_search_is_transformers_beam_search_with_its_length_penalty(fp32_llama, dialogsum_dir):
    """generate.num_beams / length_penalty: batched (left-padded, several lengths), each summary is the one
    transformers' beam search gives for that dialogue alone with the same beams and penalty; and it is not greedy
    decoding (the tiny model's beams find other words), nor blind to the penalty."""
    model, tok = fp32_llama
    dialogues = [r["dialogue"][: 120 + 70 * i] for i, r in enumerate(read_rows(dialogsum_dir / "test.jsonl", 5))]
    template = PromptTemplate(end_marker="<never emitted>")
    by_penalty = {}
    for penalty in (-3.0, 3.0):
        beams = generate_summaries(model, tok, template, dialogues, batch_size=3, max_new_tokens=10, num_beams=3,
                                   length_penalty=penalty)
        assert beams == [transformers_beams(model, tok, template, d, 3, penalty, 10) for d in dialogues]
        by_penalty[penalty] = beams
    greedy = generate_summaries(model, tok, template, dialogues, batch_size=3, max_new_tokens=10)
    assert by_penalty[-3.0] != greedy
    assert by_penalty[-3.0] != by_penalty[3.0]
    lengths = {p: sum(len(tok(s)["input_ids"]) for s in summaries) for p, summaries in by_penalty.items()}
    assert lengths[3.0] > lengths[-3.0], lengths  # a higher penalty exponent favours longer summaries
