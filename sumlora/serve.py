"""An HTTP summarization service: the model loaded once, concurrent requests micro-batched.

    python -m sumlora.serve --adapter models/release            # or models/adapter; base: models/base
    python -m sumlora.serve --adapter models/adapter --base models/base --port 8000 --max-batch 8

Endpoints (FastAPI on uvicorn):
- ``POST /v1/summarize`` ``{"dialogue": "..."}`` -> ``{"summary": "..."}``; ``{"dialogue": ["...", ...]}`` ->
  ``{"summaries": [...]}``;
- ``POST /v1/chat/completions``: the OpenAI subset; the last user message is the dialogue, the reply the summary;
- ``GET /health`` (also how many ``generate`` calls served how many dialogues), ``GET /v1/models``.

Dialogues of concurrent requests are gathered into one batched ``generate`` call (up to ``--max-batch``
dialogues, waiting at most ``--max-wait-ms`` after the first), the project's measured strength. Bad
requests get a 4xx with an OpenAI-style ``{"error": {"message": ...}}``, naming the field: malformed JSON
(400), a missing, empty or non-string dialogue or one too long for the model's context (422), more than
``--max-items`` dialogues (413). Weights and decoding: a release (``models/release``) brings its own (its
``release.json`` and ``generation_config.json``); a plain adapter uses ``--params`` (params.yaml).
"""

import asyncio
import json
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sumlora.core import cli
from sumlora.core.errors import SumloraError
from sumlora.summarize import model_settings, over_context


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    dialogues: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """One worker thread runs ``summarize(dialogues, max_batch)`` on the dialogues of the jobs that arrived
    together: after the first job it waits up to ``max_wait_s`` for more, up to ``max_batch`` dialogues (a
    larger single request is one call, batched inside). Each job gets back exactly its own slice of the results."""

    def __init__(self, summarize: Callable[[list[str], int], list[str]], max_batch: int, max_wait_s: float):
        self.summarize, self.max_batch, self.max_wait_s = summarize, max_batch, max_wait_s
        self.calls = self.dialogues = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, dialogues: list[str]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(dialogues, future, loop))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _next(self, timeout: float | None) -> _Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._queue.get(timeout=timeout)

    def _gather(self, first: _Job) -> list[_Job]:
        jobs, n = [first], len(first.dialogues)
        deadline = time.monotonic() + self.max_wait_s
        while n < self.max_batch:
            try:
                job = self._next(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            if n + len(job.dialogues) > self.max_batch:
                self._carry = job  # first in the next batch
                break
            jobs.append(job)
            n += len(job.dialogues)
        return jobs

    def _run(self) -> None:
        while (first := self._next(None)) is not None:
            jobs = self._gather(first)
            dialogues = [d for job in jobs for d in job.dialogues]
            try:
                results, error = self.summarize(dialogues, self.max_batch), None
            except Exception as e:  # noqa: BLE001 - handed to every waiting request as a 500, the server goes on
                results, error = None, e
            self.calls += 1
            self.dialogues += len(dialogues)
            start = 0
            for job in jobs:
                mine = None if error else results[start:start + len(job.dialogues)]
                start += len(job.dialogues)
                job.loop.call_soon_threadsafe(_resolve, job.future, mine, error)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Summarizer:
    """The loaded model, its template and decoding, and the checks of a request's dialogues."""

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
        else:
            dequantize_to = resolve_dequantize(gp.dequantize, model_params)
            self.max_new_tokens = max_new_tokens or gp.max_new_tokens
        if dequantize is not None:
            dequantize_to = resolve_dequantize(dequantize, model_params)
        self.model, self.tokenizer = load_model_and_tokenizer(base_dir, model_params, adapter_dir, dequantize_to)
        self.template = PromptTemplate.load(adapter_dir)
        self.context = model_max_positions(self.model.config)
        self.name = adapter_dir.resolve().name
        self.weights = f"de-quantized to {dequantize_to}" if dequantize_to else (
            "4-bit" if model_params.load_in_4bit else model_params.compute_dtype)

    def prompt_tokens(self, dialogue: str) -> int:
        from sumlora.tokenizing import encode_prompt

        return len(encode_prompt(self.tokenizer, self.template, dialogue))

    def check(self, items: list, field: str, many: bool = False) -> list[str]:
        """The dialogues of a request, or an ApiError naming the first bad one (``field[i]`` when ``many``)."""
        for i, item in enumerate(items):
            where = f"{field}[{i}]" if many else field
            if not isinstance(item, str):
                raise ApiError(422, f"{where}: must be a string, got {type(item).__name__}")
            if not item.strip():
                raise ApiError(422, f"{where}: empty dialogue, nothing to summarize")
            n = self.prompt_tokens(item)
            if problem := over_context(n, self.max_new_tokens, self.context):
                raise ApiError(422, f"{where}: {problem} (shorten it by at least "
                               f"{n + self.max_new_tokens - self.context} tokens)")
        return items

    def __call__(self, dialogues: list[str], batch_size: int) -> list[str]:
        from sumlora.generation import generate_summaries

        return generate_summaries(self.model, self.tokenizer, self.template, dialogues, batch_size=batch_size,
                                  max_new_tokens=self.max_new_tokens)


def create_app(summarizer: Summarizer, max_batch: int = 8, max_wait_ms: float = 20, max_items: int = 64):
    """The FastAPI application serving ``summarizer`` (tests and ``main`` build it the same way)."""
    # (no `from __future__ import annotations` in this module: FastAPI reads the handlers' `Request` annotation)
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["batcher"] = MicroBatcher(summarizer, max_batch, max_wait_ms / 1000)
        yield
        state["batcher"].close()

    app = FastAPI(title="sumlora", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return JSONResponse({"error": {"message": exc.message, "type": kind}}, status_code=exc.status)

    async def body(request: Request) -> dict:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"malformed JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(422, f"the body must be a JSON object, got {type(data).__name__}")
        return data

    async def summarize(dialogues: list[str]) -> list[str]:
        try:
            return await state["batcher"].submit(dialogues)
        except Exception as e:  # noqa: BLE001 - a failure inside generate: this request fails, the server goes on
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None

    @app.get("/health")
    async def health():
        b = state["batcher"]
        return {"status": "ok", "model": summarizer.name, "weights": summarizer.weights,
                "max_new_tokens": summarizer.max_new_tokens, "generate_calls": b.calls,
                "dialogues_summarized": b.dialogues}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": summarizer.name, "object": "model", "owned_by": "sumlora"}]}

    @app.post("/v1/summarize")
    async def summarize_endpoint(request: Request):
        data = await body(request)
        if "dialogue" not in data:
            raise ApiError(422, 'dialogue: missing; send {"dialogue": "..."} or {"dialogue": ["...", ...]}')
        one = not isinstance(data["dialogue"], list)
        items = [data["dialogue"]] if one else data["dialogue"]
        if not items:
            raise ApiError(422, "dialogue: an empty list, nothing to summarize")
        if len(items) > max_items:
            raise ApiError(413, f"dialogue: {len(items)} dialogues in one request; at most {max_items} (--max-items)")
        summaries = await summarize(summarizer.check(items, "dialogue", many=not one))
        return {"summary": summaries[0]} if one else {"summaries": summaries}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        data = await body(request)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(422, "messages: must be a non-empty list of {\"role\": ..., \"content\": ...}")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise ApiError(422, "messages: no message with role \"user\" (its content is the dialogue to summarize)")
        [dialogue] = summarizer.check([users[-1].get("content")], "messages[-1].content")
        [summary] = await summarize([dialogue])
        prompt, completion = summarizer.prompt_tokens(dialogue), len(summarizer.tokenizer(summary)["input_ids"])
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": summarizer.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": summary},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}

    return app


def parser():
    ap = cli.parser("sumlora.serve", __doc__)
    cli.input(ap, "--adapter", "--release", default=Path("models/release"),
              help="a release (models/release) or an adapter directory (models/adapter)")
    cli.input(ap, "--base", default=Path("models/base"), help="base model directory")
    cli.input(ap, "--params", default=Path("params.yaml"), help="model settings for a plain adapter")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch", type=int, default=8, help="most dialogues in one generate call")
    ap.add_argument("--max-wait-ms", type=float, default=20, help="how long a batch waits for more requests")
    ap.add_argument("--max-items", type=int, default=64, help="most dialogues in one request")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the release's or params.yaml's")
    ap.add_argument("--dequantize", choices=("auto", "none", "float32", "bfloat16"), default=None,
                    help="override the weights generation computes with (default: the release's, or params.yaml's)")
    return ap


def main(argv: list[str]) -> int:
    def run(_):
        args = cli.parse(parser(), argv)
        for name in ("max_batch", "max_items"):
            if getattr(args, name) < 1:
                raise SumloraError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
        cli.offline()
        import uvicorn

        summarizer = Summarizer(args.adapter, args.base, args.params, args.dequantize, args.max_new_tokens)
        print(f"serving {args.adapter} on {args.base} ({summarizer.weights}, max {summarizer.max_new_tokens} new "
              f"tokens) at http://{args.host}:{args.port}", flush=True)
        uvicorn.run(create_app(summarizer, args.max_batch, args.max_wait_ms, args.max_items), host=args.host,
                    port=args.port, log_level="info")

    return cli.call(run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
