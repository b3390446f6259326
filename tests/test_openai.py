"""The service's OpenAI-compatible API, driven with OpenAI's own Python client against the real server process on
loopback (the tiny release: base + an adapter with non-zero weights, float32, 8 new tokens). Every call either
works as OpenAI documents it or gets the stated 400/404 in OpenAI's error shape; nothing is silently ignored."""

import subprocess
import sys

import httpx
import openai
import pytest
from conftest import ROOT, read_rows
from project import env
from servers import free_port

from sumlora.core.params import load_params
from sumlora.generation import generate_summaries
from sumlora.modeling import load_model_and_tokenizer
from sumlora.prompt import PromptTemplate
from sumlora.testing import wait_until_serving

pytestmark = pytest.mark.slow
KEY = "sk-test-key"


def start(release, *extra, key=KEY):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sumlora.serve", "--adapter", str(release / "adapter"), "--base",
                             str(release / "base"), "--params", str(release / "params.yaml"), "--port", str(port),
                             "--max-batch", "4", "--max-wait-ms", "30", "--max-items", "8",
                             *(["--api-key", key] if key else []), *extra],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, proc)
    return url, proc


@pytest.fixture(scope="module")
def server(tiny_release):
    url, proc = start(tiny_release)
    yield url, proc
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def dialogues(dialogsum_dir):
    return [r["dialogue"] for r in read_rows(dialogsum_dir / "validation.jsonl", 6)]


@pytest.fixture(scope="module")
def expected(tiny_release, dialogues):
    """Greedy summaries computed apart from the server: the library's generate_summaries, one dialogue at a time."""
    params = load_params(tiny_release / "params.yaml")
    model, tok = load_model_and_tokenizer(tiny_release / "base", params.model, tiny_release / "adapter", "float32")
    return [generate_summaries(model, tok, PromptTemplate(), [d], 1, 8)[0] for d in dialogues]


def ask(client, dialogue, **kw):
    return client.chat.completions.create(model="adapter", messages=[{"role": "user", "content": dialogue}], **kw)


def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list()] == ["adapter"]
    assert client.models.retrieve("adapter").id == "adapter"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"


def test_a_plain_completion_is_the_pipelines_summary(client, dialogues, expected):
    r = ask(client, dialogues[0])
    assert r.object == "chat.completion" and r.model == "adapter" and len(r.choices) == 1
    assert r.choices[0].message.content == expected[0] and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_an_unknown_model_is_404_model_not_found(client, dialogues):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": dialogues[0]}])
    assert e.value.code == "model_not_found" and e.value.body["param"] == "model"


def test_n_gives_that_many_choices(client, dialogues, expected):
    r = ask(client, dialogues[1], n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [expected[1]] * 3  # greedy: the same summary each time


def test_max_tokens_cuts_with_finish_reason_length(client, dialogues):
    for kw in ({"max_tokens": 2}, {"max_completion_tokens": 2}):
        r = ask(client, dialogues[2], **kw)
        assert r.usage.completion_tokens <= 2 and r.choices[0].finish_reason == "length", r
    longer = ask(client, dialogues[2], max_tokens=30)  # above the server's default of 8: honoured
    assert longer.usage.completion_tokens > 8 or longer.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, dialogues[2], max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


def test_stop_cuts_before_the_stop_sequence(client, dialogues):
    full = ask(client, dialogues[3], max_tokens=30).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    r = ask(client, dialogues[3], max_tokens=30, stop=[stop])
    assert r.choices[0].message.content == full[:full.index(stop)].strip()
    assert r.choices[0].finish_reason == "stop"


def test_sampling_is_honoured_and_a_seed_repeats_it(client, dialogues, expected):
    first = ask(client, dialogues[4], temperature=1.5, seed=7, max_tokens=12, n=2)
    again = ask(client, dialogues[4], temperature=1.5, seed=7, max_tokens=12, n=2)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    others = [ask(client, dialogues[4], temperature=1.5, seed=s, max_tokens=12).choices[0].message.content
              for s in (1, 2, 3)]
    assert len(set(others + [expected[4]])) > 1  # sampling, not greedy
    greedy = ask(client, dialogues[4], temperature=0, top_p=0.5)  # temperature 0: greedy, as unset
    assert greedy.choices[0].message.content == expected[4]


def test_streaming_yields_the_same_text_chunk_by_chunk(client, dialogues, expected):
    for d, want in zip(dialogues[:4], expected[:4]):
        chunks = list(ask(client, d, stream=True, stream_options={"include_usage": True}))
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(pieces) == want
        assert chunks[0].choices[0].delta.role == "assistant"
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []
    long = list(ask(client, dialogues[5], stream=True, max_tokens=40))
    text = "".join(c.choices[0].delta.content or "" for c in long if c.choices)
    assert text == ask(client, dialogues[5], max_tokens=40).choices[0].message.content
    assert sum(1 for c in long if c.choices and c.choices[0].delta.content) >= 2  # pieces, not one block


def test_the_clients_stream_helper_accumulates_the_reply(client, dialogues):
    """chat.completions.stream (it raises LengthFinishReasonError on a reply cut at max_tokens, as documented, so the
    reply here ends at a stop sequence taken from the unstreamed reply)."""
    full = ask(client, dialogues[0], max_tokens=30).choices[0].message.content
    stop = " " + full.split()[2]
    with client.chat.completions.stream(model="adapter", messages=[{"role": "user", "content": dialogues[0]}],
                                        max_tokens=30, stop=stop) as s:
        deltas = [e.delta for e in s if e.type == "content.delta"]
        final = s.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == full[:full.index(stop)].strip()
    assert final.choices[0].finish_reason == "stop"


def test_the_async_client_streams_too(server, dialogues, expected):
    import asyncio

    async def go():
        c = openai.AsyncOpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0)
        streams = [await c.chat.completions.create(model="adapter", stream=True,
                                                   messages=[{"role": "user", "content": d}]) for d in dialogues[:4]]

        async def text(stream):
            return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

        return await asyncio.gather(*[text(s) for s in streams])

    assert asyncio.run(go()) == expected[:4]


@pytest.mark.parametrize("kw, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}},
     "response_format"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"store": True}, "store"),
    ({"extra_body": {"guided_json": {}}}, "guided_json"),
])
def test_what_a_summarizer_cannot_honour_is_a_400_that_says_why(client, dialogues, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, dialogues[0], **kw)
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"].startswith(param), err


@pytest.mark.parametrize("messages, says", [
    ([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "#Person1#: Hi."}],
     "system or developer message is not supported"),
    ([{"role": "user", "content": "#Person1#: Hi."}, {"role": "assistant", "content": "A greeting."},
      {"role": "user", "content": "#Person1#: Bye."}], "exactly one message with role \"user\""),
])
def test_a_system_message_or_several_turns_are_refused(client, messages, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="adapter", messages=messages)
    assert says in e.value.body["message"] and e.value.body["param"] == "messages"


def test_parse_with_a_schema_is_refused_not_a_validation_error(client, dialogues):
    from pydantic import BaseModel

    class Summary(BaseModel):
        text: str

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.parse(model="adapter", messages=[{"role": "user", "content": dialogues[0]}],
                                      response_format=Summary)
    assert e.value.body["param"] == "response_format"


def test_other_apis_are_404_in_openais_shape(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="adapter", prompt="#Person1#: Hi.")
    assert e.value.code == "unknown_url" and "/v1/chat/completions" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="adapter", input="#Person1#: Hi.")
    r = httpx.get(f"{server[0]}/nowhere")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_wrong_or_missing_key_is_401_in_openais_shape(server, dialogues):
    bad = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.code == "invalid_api_key"
    r = httpx.post(f"{server[0]}/v1/summarize", json={"dialogue": dialogues[0]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server[0]}/health").status_code == 200  # health needs no key
    for path in ("/docs", "/openapi.json"):  # the interactive docs are off unless --docs
        assert httpx.get(f"{server[0]}{path}").status_code == 404


def test_the_docs_list_every_field_the_server_honours_or_refuses():
    """docs/using-the-model.md names each field of sumlora.serve's HONOURED and REFUSED sets (one source: the code;
    the page must not drift from it)."""
    from sumlora.serve import HONOURED, REFUSED

    page = (ROOT / "docs" / "using-the-model.md").read_text()
    assert [f for f in sorted(HONOURED | set(REFUSED)) if f"`{f}`" not in page] == []
