"""An HTTP summarization service with an OpenAI-compatible chat endpoint: the model loaded once, the dialogues of
concurrent requests scheduled fairly into batched generate calls.

    python -m sumlora.serve --adapter models/release                      # base: models/base, 127.0.0.1:8000
    python -m sumlora.serve --adapter models/release --api-key "$KEY" --port 8000

Endpoints (FastAPI on uvicorn; docs/using-the-model.md has examples with the official ``openai`` client):
- ``POST /v1/chat/completions``: OpenAI's chat completions. The one user message is the dialogue, the reply its
  summary. Honoured: ``model`` (the served name; another is 404 ``model_not_found``), ``stream`` (server-sent
  events, ``stream_options.include_usage``), ``max_tokens`` / ``max_completion_tokens`` (``finish_reason:
  "length"`` when cut), ``stop``, ``n``, ``temperature`` / ``top_p`` / ``seed`` (greedy at temperature 0 or
  unset, as the pipeline decodes), ``user``. Refused with a 400 that says why (:data:`REFUSED`): tools and
  functions, response formats other than text, logprobs, penalties and logit bias, stored completions, audio, a
  system message (the fine-tuned prompt has no place for one) and more than one turn (one dialogue is summarized).
- ``POST /v1/summarize``: ``{"dialogue": "..."}`` -> ``{"summary": "..."}``; a list -> ``{"summaries": [...]}``.
- ``GET /v1/models``, ``GET /v1/models/{id}``; ``GET /health`` (no key needed).

Every error, 404 and 500 included, is OpenAI's ``{"error": {"message", "type", "param", "code"}}``. The server
defends itself: a body over ``--max-body-bytes`` is refused (413) while it is read, before it is parsed;
parsing, validation and tokenization run off the event loop; malformed JSON of any depth and invalid Unicode
are a 400; ``--api-key`` requires ``Authorization: Bearer KEY`` (401 otherwise) on /v1; the interactive docs are
off unless ``--docs``. Options are checked and the port is bound before the model loads. Scheduling is per
dialogue, round-robin over the waiting requests, so a one-dialogue request shares the next batch with a large
one instead of waiting for all of it. One log line per request: method, path, status, dialogues, tokens, ms.
A release (``models/release``) brings its weights settings and decoding (``release.json``,
``generation_config.json``); a plain adapter uses ``--params`` (params.yaml).
"""

import asyncio
import hmac
import json
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sumlora.core import cli
from sumlora.core.errors import SumloraError
from sumlora.summarize import model_settings, over_context

# Fields of a chat completion request that a summarizer cannot honour, and why (a 400 names the field).
REFUSED = {
    "tools": "this model summarizes dialogues; it does not call tools",
    "tool_choice": "this model summarizes dialogues; it does not call tools",
    "functions": "this model summarizes dialogues; it does not call functions",
    "function_call": "this model summarizes dialogues; it does not call functions",
    "parallel_tool_calls": "this model summarizes dialogues; it does not call tools",
    "response_format": "the reply is a plain-text summary; only {\"type\": \"text\"} is accepted",
    "logprobs": "log probabilities are not returned by this server",
    "top_logprobs": "log probabilities are not returned by this server",
    "logit_bias": "token biases are not applied by this server",
    "frequency_penalty": "penalties change the summary the model was trained to write; only 0 is accepted",
    "presence_penalty": "penalties change the summary the model was trained to write; only 0 is accepted",
    "store": "completions are not stored by this server",
    "audio": "the reply is text",
    "modalities": "the reply is text; only [\"text\"] is accepted",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "this model does not reason in steps",
    "web_search_options": "this model does not search the web",
    "service_tier": "this server has one tier",
}
HARMLESS = {"response_format": {"type": "text"}, "logprobs": False, "frequency_penalty": 0, "presence_penalty": 0,
            "store": False, "modalities": ["text"], "tool_choice": "none", "tools": [], "functions": []}
HONOURED = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "n",
            "temperature", "top_p", "seed", "user", "metadata"}


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# --- scheduling ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One summary to generate: a dialogue's prompt with its request's settings, and where its result goes."""

    prompt: list[int]
    max_new_tokens: int
    key: tuple = ()  # decoding: () greedy, or ("sample", temperature, top_p, seed): one key per generate call
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None


@dataclass
class _Job:
    items: deque = field(default_factory=deque)


class FairBatcher:
    """One worker thread runs ``run(items)`` (one batched generate call) on up to ``max_batch`` items at a time.
    Scheduling is per dialogue: each batch takes one item from each waiting request in turn (round robin,
    starting after the request that began the last batch), so a small request is served within a batch or two
    however large the requests before it. A batch holds items of one decoding key (greedy, or one sampling
    setting). After the first item arrives it waits up to ``max_wait_s`` for the batch to fill."""

    def __init__(self, run: Callable[[list[Item]], list], max_batch: int, max_wait_s: float):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.calls = self.dialogues = 0
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, items: list[Item]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        for item in items:
            item.future, item.loop = loop.create_future(), loop
        with self._cv:
            self._jobs.append(_Job(deque(items)))
            self._cv.notify()
        return [item.future for item in items]

    def waiting(self) -> int:
        with self._cv:
            return sum(len(j.items) for j in self._jobs)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=60)

    def _take(self) -> list[Item] | None:
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._jobs:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while (sum(len(j.items) for j in self._jobs) < self.max_batch and not self._closed
                   and (left := deadline - time.monotonic()) > 0):
                self._cv.wait(left)
            key = self._jobs[0].items[0].key
            batch: list[Item] = []
            while len(batch) < self.max_batch:
                took = False
                for job in self._jobs:
                    if job.items and job.items[0].key == key and len(batch) < self.max_batch:
                        batch.append(job.items.popleft())
                        took = True
                if not took:
                    break
            self._jobs.rotate(-1)  # the next batch starts with the next request
            self._jobs = deque(j for j in self._jobs if j.items)
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = [i for i in batch if not i.future.cancelled()]  # a client that went away: skip its dialogues
            if not live:
                continue
            try:
                results, error = self.run(live), None
            except Exception as e:  # noqa: BLE001 - handed to every waiting request as a 500, the server goes on
                results, error = [None] * len(live), e
            self.calls += 1
            self.dialogues += len(live)
            for item, result in zip(live, results):
                item.loop.call_soon_threadsafe(_resolve, item.future, result, error)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- the model ----------------------------------------------------------------------------------------------


class Summarizer:
    """The loaded model, its template and decoding, and what a request's dialogues are checked against."""

    def __init__(self, adapter_dir: Path, base_dir: Path, params_file: Path, dequantize: str | None,
                 max_new_tokens: int | None):
        from sumlora.core.params import ModelParams
        from sumlora.modeling import load_model_and_tokenizer, model_max_positions, resolve_dequantize
        from sumlora.prompt import PromptTemplate

        model_params, gp = model_settings(params_file)
        release = adapter_dir / "release.json"
        if release.is_file():  # the weights as the pipeline generated with, and its decoding
            load = json.loads(release.read_text())["loading"]
            model_params = ModelParams(name=model_params.name, load_in_4bit=load["load_in_4bit"],
                                       quant_type=load["quant_type"], double_quant=load["double_quant"],
                                       compute_dtype=load["compute_dtype"])
            dequantize_to = load["dequantize_to"]
            generation = json.loads((adapter_dir / "generation_config.json").read_text())
            self.max_new_tokens = max_new_tokens or generation["max_new_tokens"]
            beams = generation.get("num_beams", 1)
        else:
            dequantize_to = resolve_dequantize(gp.dequantize, model_params)
            self.max_new_tokens = max_new_tokens or gp.max_new_tokens
            beams = gp.num_beams
        # the service decodes token by token (streaming, per-request stop and sampling): said at start, not hidden
        self.decoding_note = (f"; greedy decoding, where the pipeline's summaries used beam search ({beams} beams)"
                              if beams > 1 else "")
        if dequantize is not None:
            dequantize_to = resolve_dequantize(dequantize, model_params)
        self.model, self.tokenizer = load_model_and_tokenizer(base_dir, model_params, adapter_dir, dequantize_to)
        self.template = PromptTemplate.load(adapter_dir)
        self.context = model_max_positions(self.model.config)
        self.name = adapter_dir.resolve().name
        self.created = int(adapter_dir.stat().st_mtime)
        self.weights = f"de-quantized to {dequantize_to}" if dequantize_to else (
            "4-bit" if model_params.load_in_4bit else model_params.compute_dtype)

    def prompt(self, dialogue: str, where: str, max_new: int) -> list[int]:
        """The prompt ids of a dialogue, or a 400 naming ``where`` when it does not fit the context."""
        from sumlora.tokenizing import encode_prompt

        ids = encode_prompt(self.tokenizer, self.template, dialogue)
        if problem := over_context(len(ids), max_new, self.context):
            raise ApiError(400, f"{where}: {problem} (shorten it by at least {len(ids) + max_new - self.context} "
                           "tokens)", where.split("[")[0].split(".")[0], "context_length_exceeded")
        return ids

    def __call__(self, items: list[Item]) -> list:
        import torch

        from sumlora.generation import Row, generate_rows

        sampling = None
        if items[0].key:
            _, temperature, top_p, seed = items[0].key
            sampling = {"temperature": temperature, "top_p": top_p}
            if seed is not None:
                torch.manual_seed(seed)
        rows = [Row(i.prompt, i.max_new_tokens, i.stop, i.on_text) for i in items]
        return generate_rows(self.model, self.tokenizer, self.template, rows, sampling)


# --- requests -----------------------------------------------------------------------------------------------


def parse_json(raw: bytes):
    """The JSON of a body; malformed JSON of any depth, or text that is not valid Unicode, is a 400."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: must be a string, got {type(value).__name__}", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{where}: invalid Unicode (a lone surrogate at character {e.start})", where) from None
    if not value.strip():
        raise ApiError(400, f"{where}: empty dialogue, nothing to summarize", where)
    return value


def _int(data: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        top = f" and <= {high}" if high is not None else ""
        raise ApiError(400, f"{name}: must be an integer >= {low}{top}, got {value!r}", name)
    return value


def _number(data: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or value > high
            or (value <= low if low_open else value < low)):
        raise ApiError(400, f"{name}: must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}",
                       name)
    return float(value)


@dataclass
class Chat:
    """A validated chat completion request."""

    prompt: list[int]
    n: int
    max_new: int
    stop: tuple[str, ...]
    key: tuple
    stream: bool
    include_usage: bool


def parse_chat(data: dict, s: Summarizer, max_items: int) -> Chat:
    """Validate a chat completion request against what the server honours (module docstring); a 400 names the
    first field it cannot honour and why, a 404 an unknown model."""
    for name in data:
        if name in REFUSED and data[name] is not None and data[name] != HARMLESS.get(name, object()):
            raise ApiError(400, f"{name}: not supported: {REFUSED[name]}", name, "unsupported_parameter")
        if name not in REFUSED and name not in HONOURED:
            raise ApiError(400, f"{name}: unknown parameter (this server honours {', '.join(sorted(HONOURED))})",
                           name, "unknown_parameter")
    if data.get("model") != s.name:
        raise ApiError(404, f"The model `{data.get('model')}` does not exist; this server serves `{s.name}`",
                       "model", "model_not_found")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages: must be a non-empty list of {\"role\": ..., \"content\": ...}", "messages")
    roles = [m.get("role") for m in messages]
    if roles != ["user"]:
        if "system" in roles or "developer" in roles:
            why = ("a system or developer message is not supported: the model was fine-tuned with a fixed prompt that "
                   "has no place for one; send the dialogue as the one user message")
        else:
            why = ("exactly one message with role \"user\" is supported: its content is the dialogue to summarize "
                   f"(got roles {roles})")
        raise ApiError(400, f"messages: {why}", "messages")
    content = messages[0].get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise ApiError(400, "messages[0].content: only text parts are supported", "messages")
        content = "".join(str(p.get("text", "")) for p in content)
    dialogue = _text(content, "messages[0].content")
    n = _int(data, "n", 1, max_items) or 1
    cap = _int(data, "max_completion_tokens", 1)
    cap = _int(data, "max_tokens", 1) if cap is None else cap
    max_new = cap or s.max_new_tokens
    stop = data.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(x, str) and x for x in stop)):
        raise ApiError(400, "stop: must be a non-empty string or a list of at most 4 of them", "stop")
    temperature = _number(data, "temperature", 0.0, 2.0)
    top_p = _number(data, "top_p", 0.0, 1.0, low_open=True)
    seed = _int(data, "seed", -(2**63), 2**63 - 1)
    stream = data.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream: must be true or false, got {stream!r}", "stream")
    options = data.get("stream_options") or {}
    if options and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise ApiError(400, "stream_options: only {\"include_usage\": true|false}, with stream: true", "stream_options")
    key = ("sample", temperature, top_p, None if seed is None else seed % 2**63) if temperature else ()
    return Chat(s.prompt(dialogue, "messages[0].content", max_new), n, max_new, tuple(stop or ()), key, stream,
                bool(options.get("include_usage")))


def parse_summarize(data: dict, s: Summarizer, max_items: int) -> tuple[list[list[int]], bool]:
    if "dialogue" not in data:
        raise ApiError(400, 'dialogue: missing; send {"dialogue": "..."} or {"dialogue": ["...", ...]}', "dialogue")
    one = not isinstance(data["dialogue"], list)
    items = [data["dialogue"]] if one else data["dialogue"]
    if not items:
        raise ApiError(400, "dialogue: an empty list, nothing to summarize", "dialogue")
    if len(items) > max_items:
        raise ApiError(413, f"dialogue: {len(items)} dialogues in one request; at most {max_items} (--max-items)",
                       "dialogue")
    where = [("dialogue" if one else f"dialogue[{i}]") for i in range(len(items))]
    return [s.prompt(_text(d, w), w, s.max_new_tokens) for d, w in zip(items, where)], one


EMPTY = ("the model wrote an empty summary: it summarizes dialogues (turns such as \"#Person1#: ...\"), and this "
         "input does not look like one")


# --- the application ----------------------------------------------------------------------------------------


def create_app(summarizer: Summarizer, max_batch: int = 8, max_wait_ms: float = 20, max_items: int = 64,
               max_body_bytes: int = 1 << 20, api_key: str | None = None, docs: bool = False, log=None):
    """The FastAPI application serving ``summarizer`` (tests and ``main`` build it the same way)."""
    # (no `from __future__ import annotations` in this module: FastAPI reads the handlers' `Request` annotation)
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["batcher"] = FairBatcher(summarizer, max_batch, max_wait_ms / 1000)
        yield
        state["batcher"].close()

    app = FastAPI(title="sumlora", lifespan=lifespan, docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            message = (f"Unknown request URL: {request.method} {request.url.path}. This server serves POST "
                       "/v1/chat/completions, POST /v1/summarize, GET /v1/models, GET /health")
            return JSONResponse(ApiError(404, message, None, "unknown_url").body(), status_code=404)
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}").body(), status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The API key on /v1, then one log line when the response is complete (streams included)."""
        start = time.perf_counter()
        request.state.dialogues, request.state.tokens = 0, 0
        if api_key is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                response = JSONResponse(ApiError(401, "Incorrect or missing API key: send the header "
                                                      "'Authorization: Bearer KEY' with the key the server was "
                                                      "started with (--api-key)", None, "invalid_api_key").body(),
                                        status_code=401)
                log(f"{request.method} {request.url.path} 401 dialogues=0 tokens=0 "
                    f"ms={(time.perf_counter() - start) * 1000:.0f}")
                return response
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered in OpenAI's shape, logged once
            response = await server_error(request, exc)

        def line():
            log(f"{request.method} {request.url.path} {response.status_code} dialogues={request.state.dialogues} "
                f"tokens={request.state.tokens} ms={(time.perf_counter() - start) * 1000:.0f}")

        if isinstance(response, StreamingResponse) or hasattr(response, "body_iterator"):
            inner = response.body_iterator

            async def logged():
                try:
                    async for chunk in inner:
                        yield chunk
                finally:
                    line()

            response.body_iterator = logged()
        else:
            line()
        return response

    async def body(request: Request) -> dict:
        """The request's JSON, refused with a 413 as soon as it passes ``max_body_bytes`` (before any parsing)."""
        too_big = ApiError(413, f"the request body is larger than {max_body_bytes:,} bytes (--max-body-bytes)", None,
                           "request_too_large")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return await run_in_threadpool(parse_json, b"".join(chunks))

    async def results(items: list[Item]) -> list:
        try:
            return await asyncio.gather(*state["batcher"].submit(items))
        except Exception as e:  # noqa: BLE001 - a failure inside generate: this request fails, the server goes on
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None

    @app.get("/health")
    async def health():
        b = state["batcher"]
        return {"status": "ok", "model": summarizer.name, "weights": summarizer.weights,
                "max_new_tokens": summarizer.max_new_tokens, "generate_calls": b.calls,
                "dialogues_summarized": b.dialogues, "dialogues_waiting": b.waiting()}

    def model_card() -> dict:
        return {"id": summarizer.name, "object": "model", "created": summarizer.created, "owned_by": "sumlora"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != summarizer.name:
            raise ApiError(404, f"The model `{model_id}` does not exist; this server serves `{summarizer.name}`",
                           "model", "model_not_found")
        return model_card()

    @app.post("/v1/summarize")
    async def summarize_endpoint(request: Request):
        data = await body(request)
        prompts, one = await run_in_threadpool(parse_summarize, data, summarizer, max_items)
        request.state.dialogues = len(prompts)
        done = await results([Item(p, summarizer.max_new_tokens) for p in prompts])
        request.state.tokens = sum(r.tokens for r in done)
        if one and not done[0].text:
            raise ApiError(422, f"dialogue: {EMPTY}", "dialogue", "empty_summary")
        return {"summary": done[0].text} if one else {"summaries": [r.text for r in done]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        data = await body(request)
        req = await run_in_threadpool(parse_chat, data, summarizer, max_items)
        request.state.dialogues = req.n
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": len(req.prompt)}

        def make_items(on_text=None) -> list[Item]:
            return [Item(req.prompt, req.max_new, req.key, req.stop,
                         None if on_text is None else (lambda text, k=k: on_text(k, text))) for k in range(req.n)]

        if not req.stream:
            done = await results(make_items())
            request.state.tokens = sum(r.tokens for r in done)
            if not any(r.text for r in done):
                raise ApiError(422, f"messages[0].content: {EMPTY}", "messages", "empty_summary")
            usage.update(completion_tokens=request.state.tokens, total_tokens=len(req.prompt) + request.state.tokens)
            return {"id": ident, "object": "chat.completion", "created": created, "model": summarizer.name,
                    "choices": [{"index": k, "message": {"role": "assistant", "content": r.text},
                                 "logprobs": None, "finish_reason": r.finish_reason} for k, r in enumerate(done)],
                    "usage": usage}

        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
        futures = state["batcher"].submit(make_items(
            lambda k, text: loop.call_soon_threadsafe(pieces.put_nowait, (k, text))))

        def chunk(choices: list, **extra) -> str:
            return "data: " + json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                          "model": summarizer.name, "choices": choices, **extra}) + "\n\n"

        async def events():
            yield chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for k in range(req.n)])
            finished: list = [None] * req.n

            def piece(k: int, text: str) -> str:
                return chunk([{"index": k, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

            while not all(finished):
                pending = [f for f in futures if not f.done()]
                if pieces.empty() and pending:  # wait for a piece of text or the end of a choice
                    getter = asyncio.ensure_future(pieces.get())
                    await asyncio.wait({getter, *pending}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield piece(*getter.result())
                    else:
                        getter.cancel()
                while not pieces.empty():  # every piece of a choice comes before its end
                    yield piece(*pieces.get_nowait())
                for k, f in enumerate(futures):
                    if f.done() and finished[k] is None:
                        if f.exception() is not None:
                            err = ApiError(500, f"generation failed: {type(f.exception()).__name__}")
                            yield "data: " + json.dumps(err.body()) + "\n\ndata: [DONE]\n\n"
                            return
                        finished[k] = f.result()
                        yield chunk([{"index": k, "delta": {}, "logprobs": None,
                                      "finish_reason": finished[k].finish_reason}])
            request.state.tokens = sum(r.tokens for r in finished)
            if req.include_usage:
                yield chunk([], usage={**usage, "completion_tokens": request.state.tokens,
                                       "total_tokens": len(req.prompt) + request.state.tokens})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# --- the command --------------------------------------------------------------------------------------------


def parser():
    ap = cli.parser("sumlora.serve", __doc__)
    cli.input(ap, "--adapter", "--release", default=Path("models/release"),
              help="a release (models/release) or an adapter directory (models/adapter)")
    cli.input(ap, "--base", default=Path("models/base"), help="base model directory")
    cli.input(ap, "--params", default=Path("params.yaml"), help="model settings for a plain adapter")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed at start)")
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (like vLLM's)")
    ap.add_argument("--max-batch", type=int, default=8, help="most dialogues in one generate call")
    ap.add_argument("--max-wait-ms", type=float, default=20, help="how long a batch waits for more dialogues")
    ap.add_argument("--max-items", type=int, default=64, help="most dialogues (or choices, n) in one request")
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the release's or params.yaml's")
    ap.add_argument("--dequantize", choices=("auto", "none", "float32", "bfloat16"), default=None,
                    help="override the weights generation computes with (default: the release's, or params.yaml's)")
    ap.add_argument("--docs", action="store_true", help="serve the interactive API docs at /docs")
    return ap


def check_options(args) -> None:
    for name in ("max_batch", "max_items", "max_body_bytes", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SumloraError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.max_wait_ms < 0:
        raise SumloraError(f"--max-wait-ms: must be >= 0, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise SumloraError(f"--port: must be in 0..65535, got {args.port}")
    if args.api_key is not None and not args.api_key.strip():
        raise SumloraError("--api-key: must not be empty")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now (before the model loads): a port in use is an error at once."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as e:
        raise SumloraError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                           "choose another port (--port 0 picks a free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str]) -> int:
    def run(_):
        args = cli.parse(parser(), argv)
        check_options(args)
        sock = bind(args.host, args.port)
        cli.offline()
        if not sys.stderr.isatty():  # a log file gets one line per request, not loading bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        import uvicorn

        summarizer = Summarizer(args.adapter, args.base, args.params, args.dequantize, args.max_new_tokens)
        host, port = sock.getsockname()[:2]
        print(f"serving {args.adapter} as model {summarizer.name!r} on {args.base} ({summarizer.weights}, max "
              f"{summarizer.max_new_tokens} new tokens{summarizer.decoding_note}) at http://{host}:{port}"
              + (" (API key required)" if args.api_key else ""), flush=True)
        app = create_app(summarizer, args.max_batch, args.max_wait_ms, args.max_items, args.max_body_bytes,
                         args.api_key, args.docs)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])

    return cli.call(run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
