"""The OpenAI-compatible HTTP API (FastAPI) over the continuous-batching engine.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
server-sent-event streaming), `GET /health`, `GET /metrics`, `GET /openapi.json` (the request
bodies' JSON Schemas, rules across fields included), and the web chat page at `GET /`
(`webchat.py`). Every error a client can cause comes back
in OpenAI's error shape with a 4xx status; anything unexpected is a 500 with a generic message
(logged here, never sent as a traceback). A client that disconnects cancels its request, which
frees its batch slots at the engine's next step.

The event loop only moves bytes: parsing, validation, template rendering and tokenizing run in
a worker thread (`ServerContext.prepare_chat` / `prepare_completions`), each bounded by
`limits`, so `/health` and running streams keep answering while a large request is prepared.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthError, LFMKitError
from ..inference.engine import Engine, EngineOverloadedError, ErrorEvent, RequestHandle, TokenEvent
from ..inference.sampling import SamplingParams
from .chat import ChatOutput, ChatPrompt, CompletionOutput, build_chat_prompt, encode_prompt
from .guard import GuardMiddleware, JSONBody, error_response, too_large
from .limits import MAX_BODY_BYTES, BodyTooLarge, PromptBound, check_body_values
from .schema import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    chat_chunk,
    completion_chunk,
    error_body,
    model_list,
    new_id,
    now,
    parse_request,
    request_schemas,
    to_json,
    usage,
)
from .structured import request_constraint
from .webchat import add_web_chat

log = logging.getLogger("lfmkit.server")

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


class EngineFailure(Exception):
    """The engine failed a request (its message is safe to show: it names no internals)."""


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else to_json(payload)}\n\n"


class ServerContext:
    """What every route needs: the engine, the tokenizer, the served name, sampling defaults, limits."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        model_name: str,
        defaults: dict[str, Any] | None = None,
        api_key: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.defaults = dict(defaults or {})
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.bound = PromptBound(tokenizer, engine.max_length)
        self.shutting_down = False  # set when the grace period is over (see runner.py)
        self.created = now()

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise RequestError(
                f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                param="model",
                status=404,
                type_="invalid_request_error",
                code="model_not_found",
            )

    # ---- preparing a request (in a worker thread) ------------------------------------------
    def prepare_chat(self, body: bytes) -> tuple[ChatCompletionRequest, ChatPrompt, SamplingParams]:
        """Parse and validate a chat body, render and tokenize its prompt, resolve its sampling."""
        check_body_values(body)
        req: ChatCompletionRequest = parse_request(ChatCompletionRequest, body)
        self.check_model(req.model)
        prompt = build_chat_prompt(self.tokenizer, req, self.bound)
        params = self.sampling_params(req, req.completion_limit(), len(prompt.ids), req.logprobs, req.top_logprobs or 0)
        constraint = request_constraint(self.tokenizer, req, self.engine.vocab_size)
        return req, prompt, params if constraint is None else params.replace(constraint=constraint)

    def prepare_completions(
        self, body: bytes
    ) -> tuple[CompletionRequest, list[list[int]], list[SamplingParams], list[str]]:
        """Parse and validate a completions body: its prompts' ids, sampling and echo texts."""
        check_body_values(body)
        req: CompletionRequest = parse_request(CompletionRequest, body)
        self.check_model(req.model)
        prompts = req.prompts()
        capacity = self.engine.config.max_concurrent + self.engine.config.max_queued
        if len(prompts) > capacity:
            raise RequestError(
                f"'prompt' holds {len(prompts)} prompts; this server takes at most {capacity} requests at once",
                param="prompt",
            )
        ids = [encode_prompt(self.tokenizer, p, self.bound) for p in prompts]
        params = [
            self.sampling_params(req, req.max_tokens, len(i), req.logprobs is not None, req.logprobs or 0) for i in ids
        ]
        echoes = [_echo_text(self.tokenizer, p) if req.echo else "" for p in prompts]
        return req, ids, params, echoes

    def sampling_params(
        self, req, max_tokens: int | None, prompt_len: int, logprobs: bool, top_logprobs: int
    ) -> SamplingParams:
        """The request's sampling parameters over the server's defaults, validated.

        Without a max_tokens the completion may fill the rest of the context.
        """
        kwargs = dict(self.defaults)
        kwargs.update(req.sampling_kwargs())
        if max_tokens is None:
            max_tokens = max(1, self.engine.max_length - prompt_len)
        kwargs.update(max_tokens=max_tokens, logprobs=logprobs, top_logprobs=top_logprobs)
        try:
            params = SamplingParams(**kwargs)
            params.validate()
        except (LFMKitError, TypeError, ValueError) as exc:
            raise RequestError(str(exc), param=_param_in(str(exc), kwargs)) from None
        return params

    def submit(self, prompt_ids: list[int], params: SamplingParams, skip_special: bool, param: str) -> RequestHandle:
        try:
            return self.engine.submit(
                prompt_ids, params, loop=asyncio.get_running_loop(), skip_special_tokens=skip_special
            )
        except EngineOverloadedError:
            raise
        except ContextLengthError as exc:
            raise RequestError(str(exc), param=param, code="context_length_exceeded") from None
        except LFMKitError as exc:
            raise RequestError(str(exc), param=_param_in(str(exc), vars(params)) or param) from None

    def failure_type(self) -> str:
        """The error type of a request the engine ended: shutting down, or a failed step."""
        return "service_unavailable" if self.shutting_down else "server_error"


def _param_in(message: str, names) -> str | None:
    """The request parameter an error message names, if any."""
    return next((k for k in names if f"'{k}'" in message or f"{k} " in message or f"{k}=" in message), None)


def _package_version() -> str:
    try:
        return importlib.metadata.version("lfmkit")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0"


def _request_body(schema: str) -> dict:
    """An `openapi_extra` entry: the route's JSON body is `schema` (routes read the body themselves)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
_ERRORS = {
    status: {"description": what, **_ERROR}
    for status, what in (
        (400, "invalid request"),
        (401, "missing or wrong API key"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "queue full"),
        (503, "shutting down"),
    )
}
_STREAMED = {
    200: {
        "description": 'the completion (JSON), or with "stream": true server-sent events',
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}


def create_app(context: ServerContext) -> FastAPI:
    """The FastAPI application; the caller owns (starts and stops) `context.engine`."""
    app = FastAPI(
        title="lfmkit", version=_package_version(), docs_url=None, redoc_url=None, default_response_class=JSONBody
    )
    app.state.ctx = context
    app.add_middleware(GuardMiddleware, context=context)
    metrics = context.engine.metrics

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                routes=app.routes,
                description="OpenAI-compatible API of an LFM2 model (lfmkit serve)",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)  # FastAPI's validation error: never sent here
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components.update(request_schemas(context.model_name))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(_request, exc: BodyTooLarge):
        return too_large(exc)

    @app.exception_handler(RequestError)
    async def on_request_error(_request, exc: RequestError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(EngineOverloadedError)
    async def on_overload(_request, exc: EngineOverloadedError):
        status = 503 if exc.stopped else 429
        return error_response(
            status,
            str(exc),
            type_="server_overloaded" if status == 429 else "service_unavailable",
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )

    @app.exception_handler(EngineFailure)
    async def on_engine_failure(_request, exc: EngineFailure):
        return error_response(503 if context.shutting_down else 500, str(exc), type_=context.failure_type())

    @app.exception_handler(LFMKitError)
    async def on_lfmkit_error(_request, exc: LFMKitError):
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request, exc: StarletteHTTPException):
        return error_response(
            exc.status_code,
            str(exc.detail),
            type_="not_found_error" if exc.status_code == 404 else "invalid_request_error",
            headers=getattr(exc, "headers", None),
        )  # 405 carries `Allow`

    @app.exception_handler(Exception)
    async def on_unexpected(_request, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal server error", type_="server_error")

    @app.get("/health")
    async def health():
        if not context.engine.running:
            return error_response(503, "the engine is not running", type_="service_unavailable")
        return {
            "status": "ok",
            "model": context.model_name,
            "running": context.engine.active_sequences(),
            "queued": context.engine.queue_depth(),
            "max_concurrent": context.engine.config.max_concurrent,
        }

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return model_list(context.model_name, context.created, context.engine.max_length)

    @app.get("/v1/models/{model_id:path}", responses={404: _ERRORS[404]})
    async def model_info(model_id: str):
        context.check_model(model_id)
        return model_list(context.model_name, context.created, context.engine.max_length)["data"][0]

    @app.post(CHAT, openapi_extra=_request_body("ChatCompletionRequest"), responses={**_STREAMED, **_ERRORS})
    async def chat_completions(request: Request):
        req, prompt, params = await asyncio.to_thread(context.prepare_chat, await request.body())
        handle = context.submit(prompt.ids, params, req.skip_special_tokens, "messages")
        outputs = [ChatOutput(context.tokenizer, prompt, want_logprobs=req.logprobs) for _ in range(handle.n)]
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream([handle], _chat_chunks(context, handle, outputs, rid, created, include_usage))
        await _collect(request, [handle], [outputs])
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": context.model_name,
            "system_fingerprint": None,
            "choices": [o.final_choice(i) for i, o in enumerate(outputs)],
            "usage": _usage([handle], sum(o.completion_tokens for o in outputs)),
        }

    @app.post(COMPLETIONS, openapi_extra=_request_body("CompletionRequest"), responses={**_STREAMED, **_ERRORS})
    async def completions(request: Request):
        req, prompts, params, echoes = await asyncio.to_thread(context.prepare_completions, await request.body())
        handles: list[RequestHandle] = []
        try:
            for ids, p in zip(prompts, params):
                handles.append(context.submit(ids, p, req.skip_special_tokens, "prompt"))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        rid, created = new_id("cmpl"), now()
        outputs = [[CompletionOutput(context.tokenizer, echo) for _ in range(req.n)] for echo in echoes]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(handles, _completion_chunks(context, handles, outputs, rid, created, include_usage))
        await _collect(request, handles, outputs)
        choices = [o.final_choice(p * req.n + j) for p, row in enumerate(outputs) for j, o in enumerate(row)]
        completion = sum(o.completion_tokens for row in outputs for o in row)
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": context.model_name,
            "system_fingerprint": None,
            "choices": choices,
            "usage": _usage(handles, completion),
        }

    add_web_chat(app)
    return app


def _usage(handles: list[RequestHandle], completion_tokens: int) -> dict:
    """`usage` of a response: its prompts' tokens, of which `cached_tokens` came from the prefix cache."""
    prompt = sum(h.prompt_tokens for h in handles)
    return usage(prompt, completion_tokens, sum(h.cached_tokens for h in handles))


def _echo_text(tokenizer, prompt) -> str:
    """The prompt as /v1/completions echoes it: the text as sent, or token ids decoded."""
    if isinstance(prompt, str):
        return prompt
    try:
        return tokenizer.decode(prompt) if tokenizer is not None else ""
    except LFMKitError:
        return ""


async def _watch_disconnect(request: Request, handles: list[RequestHandle]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for h in handles:
                h.cancel()
            return


async def _collect(request: Request, handles: list[RequestHandle], outputs: list[list]) -> None:
    """Gather whole (non-streamed) results; a client disconnect cancels the requests."""
    watcher = asyncio.create_task(_watch_disconnect(request, handles))

    async def one(handle: RequestHandle, outs: list) -> None:
        async for ev in handle:
            if isinstance(ev, ErrorEvent):
                raise EngineFailure(ev.message)
            out = outs[ev.index]
            if isinstance(ev, TokenEvent):
                out.on_token(ev)
            else:
                out.on_finish(ev)

    try:
        await asyncio.gather(*(one(h, o) for h, o in zip(handles, outputs)))
    finally:
        watcher.cancel()
        for h in handles:
            h.cancel()


def _stream(handles: list[RequestHandle], chunks: AsyncIterator[str]) -> StreamingResponse:
    async def body():
        try:
            async for piece in chunks:
                yield piece
        except asyncio.CancelledError:  # the client went away
            raise
        except Exception:
            log.exception("error while streaming")
            yield _sse(error_body("internal server error", "server_error"))
            yield _sse("[DONE]")
        finally:
            for h in handles:
                h.cancel()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _chat_chunks(
    context: ServerContext,
    handle: RequestHandle,
    outputs: list[ChatOutput],
    rid: str,
    created: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    model = context.model_name
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, logprobs=None, finish_reason=None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _sse(chat_chunk(rid, created, model, [choice], **usage_field))

    for i in range(handle.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for ev in handle:
        if isinstance(ev, ErrorEvent):
            yield _sse(error_body(ev.message, context.failure_type()))
            break
        out = outputs[ev.index]
        if isinstance(ev, TokenEvent):
            deltas = out.on_token(ev)
            logprobs = out.last_logprobs
            if logprobs is not None and not deltas:
                deltas = [{}]
            for k, delta in enumerate(deltas):
                yield chunk(ev.index, delta, logprobs if k == 0 else None)
        elif ev.reason == "cancelled":
            return
        else:
            for delta in out.on_finish(ev):
                yield chunk(ev.index, delta)
            yield chunk(ev.index, {}, finish_reason=out.finish_reason)
    if include_usage:
        yield _sse(
            chat_chunk(rid, created, model, [], usage=_usage([handle], sum(o.completion_tokens for o in outputs)))
        )
    yield _sse("[DONE]")


async def _completion_chunks(
    context: ServerContext, handles: list[RequestHandle], outputs, rid: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    model = context.model_name
    usage_field = {"usage": None} if include_usage else {}
    events: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, handle: RequestHandle):
        async for ev in handle:
            await events.put((p, ev))
        await events.put((p, None))

    def chunk(index: int, text: str, logprobs=None, finish_reason=None) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return _sse(completion_chunk(rid, created, model, [choice], **usage_field))

    tasks = [asyncio.create_task(pump(p, h)) for p, h in enumerate(handles)]
    try:
        n = len(outputs[0])
        for p, row in enumerate(outputs):  # echo: the prompt text comes first
            for j, out in enumerate(row):
                if out.text:
                    yield chunk(p * n + j, out.text)
        remaining = len(handles)
        while remaining:
            p, ev = await events.get()
            if ev is None:
                remaining -= 1
                continue
            if isinstance(ev, ErrorEvent):
                yield _sse(error_body(ev.message, context.failure_type()))
                break
            out, index = outputs[p][ev.index], p * n + ev.index
            if isinstance(ev, TokenEvent):
                logprobs = out.on_token(ev)
                if ev.text or logprobs is not None:
                    yield chunk(index, ev.text, logprobs)
            elif ev.reason == "cancelled":
                return
            else:
                out.on_finish(ev)
                yield chunk(index, ev.text, None, out.finish_reason)
        if include_usage:
            completion = sum(o.completion_tokens for row in outputs for o in row)
            yield _sse(completion_chunk(rid, created, model, [], usage=_usage(handles, completion)))
        yield _sse("[DONE]")
    finally:
        for task in tasks:
            task.cancel()


__all__ = ["ServerContext", "create_app", "CHAT", "COMPLETIONS"]
