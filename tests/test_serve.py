"""The HTTP service, as a real server process on a loopback port, spoken to over HTTP: its summaries are the
command line's, concurrent requests are micro-batched and each gets its own dialogue's summary, bad requests
get a 4xx that names the problem and the server keeps serving, SIGTERM stops it cleanly."""

import asyncio
import io
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, read_rows
from project import env
from servers import free_port

from sumlora.core.params import load_params
from sumlora.generation import generate_summaries
from sumlora.modeling import load_model_and_tokenizer
from sumlora.prompt import PromptTemplate
from sumlora.summarize import main as summarize_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_release):
    model = tiny_release
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sumlora.serve", "--adapter", str(model / "adapter"), "--base",
                             str(model / "base"), "--params", str(model / "params.yaml"), "--port", str(port),
                             "--max-batch", "8", "--max-wait-ms", "50", "--max-items", "16"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("the server did not answer /health within 120 s")
    yield url, proc
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def dialogues(dialogsum_dir):
    return [r["dialogue"] for r in read_rows(dialogsum_dir / "validation.jsonl", 32)]


@pytest.fixture(scope="module")
def expected(tiny_release, dialogues):
    model = tiny_release
    """One dialogue at a time, as the command line summarizes (checked against it for the first two)."""
    params = load_params(model / "params.yaml")
    m, tok = load_model_and_tokenizer(model / "base", params.model, model / "adapter", "float32")
    summaries = [generate_summaries(m, tok, PromptTemplate(), [d], 1, 8)[0] for d in dialogues]
    for dialogue, summary in zip(dialogues[:2], summaries):
        out = io.StringIO()
        assert summarize_main(["--adapter", str(model / "adapter"), "--base", str(model / "base"), "--params",
                               str(model / "params.yaml")], stdin=io.StringIO(dialogue), stdout=out) == 0
        assert out.getvalue() == summary + "\n"
    assert len(set(summaries)) >= 8  # different dialogues, different summaries (14 of 32 here): a mix-up shows
    return summaries


def test_summaries_equal_the_command_lines(server, dialogues, expected):
    url, _ = server
    one = httpx.post(f"{url}/v1/summarize", json={"dialogue": dialogues[0]}, timeout=60)
    assert one.status_code == 200 and one.json() == {"summary": expected[0]}
    many = httpx.post(f"{url}/v1/summarize", json={"dialogue": dialogues[:5]}, timeout=60)
    assert many.status_code == 200 and many.json() == {"summaries": expected[:5]}


def test_concurrent_requests_are_batched_and_each_gets_its_own_summary(server, dialogues, expected):
    url, _ = server
    before = httpx.get(f"{url}/health").json()

    async def all_at_once():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[client.post(f"{url}/v1/summarize", json={"dialogue": d})
                                          for d in dialogues])

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.json()["summary"] for r in responses] == expected
    after = httpx.get(f"{url}/health").json()
    calls = after["generate_calls"] - before["generate_calls"]
    assert after["dialogues_summarized"] - before["dialogues_summarized"] == 32
    assert 4 <= calls < 32, calls  # gathered into batches of at most --max-batch 8


def test_openai_chat_completions_subset(server, dialogues, expected):
    url, _ = server
    [model] = httpx.get(f"{url}/v1/models").json()["data"]
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": model["id"], "messages": [{"role": "system", "content": "You summarize."},
                                           {"role": "user", "content": dialogues[3]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == model["id"]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected[3]}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


LONG = "#Person1#: " + "word " * 3000


@pytest.mark.parametrize("path, payload, status, message", [
    ("/v1/summarize", b'{"dialogue": "unfinished', 400, "malformed JSON: "),
    ("/v1/summarize", b'["a list"]', 422, "the body must be a JSON object, got list"),
    ("/v1/summarize", {}, 422, "dialogue: missing"),
    ("/v1/summarize", {"dialogue": 42}, 422, "dialogue: must be a string, got int"),
    ("/v1/summarize", {"dialogue": "  \n"}, 422, "dialogue: empty dialogue"),
    ("/v1/summarize", {"dialogue": []}, 422, "dialogue: an empty list"),
    ("/v1/summarize", {"dialogue": ["#Person1#: Hi.", None]}, 422, "dialogue[1]: must be a string, got NoneType"),
    ("/v1/summarize", {"dialogue": LONG}, 422, "exceeds the model's context of 2048 tokens"),
    ("/v1/summarize", {"dialogue": ["#Person1#: Hi."] * 17}, 413, "17 dialogues in one request; at most 16"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages: must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, 422, "no message with role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, 422, "messages[-1].content: empty"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, dialogues, expected, path, payload,
                                                                   status, message):
    url, _ = server
    kw = {"content": payload, "headers": {"content-type": "application/json"}} if isinstance(payload, bytes) else {
        "json": payload}
    r = httpx.post(f"{url}{path}", timeout=60, **kw)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"], r.text
    ok = httpx.post(f"{url}/v1/summarize", json={"dialogue": dialogues[1]}, timeout=60)
    assert ok.status_code == 200 and ok.json()["summary"] == expected[1]


def test_sigterm_shuts_down_cleanly(server):
    url, proc = server
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says what stopped it
    assert proc.returncode in (0, -signal.SIGTERM), out[-3000:]
    assert "Application shutdown complete" in out and "Finished server process" in out and "Traceback" not in out
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health")
