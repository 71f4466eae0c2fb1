"""The OpenAI-compatible HTTP API (FastAPI) over the continuous-batching engine.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with
server-sent-event streaming), `GET /health`, `GET /metrics`. Every error a client can cause
comes back in OpenAI's error shape with a 4xx status; anything unexpected is a 500 with a
generic message (logged here, never sent as a traceback). A client that disconnects cancels
its request, which frees its batch slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..inference.engine import Engine, EngineOverloadedError, ErrorEvent, RequestHandle, TokenEvent
from ..errors import ContextLengthError, LFMKitError
from .chat import ChatOutput, CompletionOutput, build_chat_prompt, encode_prompt
from .schema import (ChatCompletionRequest, CompletionRequest, RequestError, chat_chunk,
                            completion_chunk, error_body, model_list, new_id, now, parse_request, usage)
from ..inference.sampling import SamplingParams

log = logging.getLogger("lfmkit.server")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
MAX_BODY_BYTES = 32 * 2**20   # a request body larger than this is refused (413) before it is read


class EngineFailure(Exception):
    """The engine failed a request (its message is safe to show: it names no internals)."""


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"),
                                                               ensure_ascii=False)
    return f"data: {data}\n\n"


class ServerContext:
    """What every route needs: the engine, the tokenizer, the served name, sampling defaults."""

    def __init__(self, engine: Engine, tokenizer, model_name: str, defaults: dict[str, Any] | None = None,
                 api_key: str | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.defaults = dict(defaults or {})
        self.api_key = api_key
        self.created = now()

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise RequestError(f"the model '{name}' does not exist; this server serves '{self.model_name}'",
                               param="model", status=404, type_="invalid_request_error",
                               code="model_not_found")

    def sampling_params(self, req, max_tokens: int | None, prompt_len: int, logprobs: bool,
                        top_logprobs: int) -> SamplingParams:
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

    def submit(self, prompt_ids: list[int], params: SamplingParams, skip_special: bool,
               param: str) -> RequestHandle:
        try:
            return self.engine.submit(prompt_ids, params, loop=asyncio.get_running_loop(),
                                      skip_special_tokens=skip_special)
        except EngineOverloadedError:
            raise
        except ContextLengthError as exc:
            raise RequestError(str(exc), param=param, code="context_length_exceeded") from None
        except LFMKitError as exc:
            raise RequestError(str(exc), param=_param_in(str(exc), vars(params)) or param) from None


def _param_in(message: str, names) -> str | None:
    """The request parameter an error message names, if any."""
    return next((k for k in names if f"'{k}'" in message or f"{k} " in message or f"{k}=" in message), None)


class GuardMiddleware:
    """Pure ASGI middleware: Bearer auth on /v1/*, request counting, and a last-resort 500.

    (Pure ASGI rather than BaseHTTPMiddleware so streaming and client disconnects pass
    through untouched.)
    """

    def __init__(self, app, context: ServerContext):
        self.app = app
        self.context = context

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/v1/models" if path.startswith("/v1/models/") else "other")
        metrics = self.context.engine.metrics
        status = {"code": 500, "started": False}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        key = self.context.api_key
        if key and path.startswith("/v1/"):
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            token = header[7:].strip() if header[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                response = _error(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                  type_="authentication_error", code="invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, counting_send)
                metrics.requests.inc(endpoint=endpoint, status="401")
                return
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            response = _error(413, f"the request body must be at most {MAX_BODY_BYTES} bytes",
                              code="request_too_large")
            await response(scope, receive, counting_send)
            metrics.requests.inc(endpoint=endpoint, status="413")
            return
        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            log.exception("unhandled error on %s", path)
            if not status["started"]:
                await _error(500, "internal server error", type_="server_error")(scope, receive, counting_send)
        finally:
            metrics.requests.inc(endpoint=endpoint, status=str(status["code"]))


def create_app(context: ServerContext) -> FastAPI:
    """The FastAPI application; the caller owns (starts and stops) `context.engine`."""
    app = FastAPI(title="lfmkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = context
    app.add_middleware(GuardMiddleware, context=context)
    metrics = context.engine.metrics

    @app.exception_handler(RequestError)
    async def on_request_error(_request, exc: RequestError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(EngineOverloadedError)
    async def on_overload(_request, exc: EngineOverloadedError):
        status = 503 if exc.stopped else 429
        return _error(status, str(exc), type_="server_overloaded" if status == 429 else "service_unavailable",
                      headers={"Retry-After": str(max(1, round(exc.retry_after)))})

    @app.exception_handler(EngineFailure)
    async def on_engine_failure(_request, exc: EngineFailure):
        return _error(500, str(exc), type_="server_error")

    @app.exception_handler(LFMKitError)
    async def on_lfmkit_error(_request, exc: LFMKitError):
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail),
                      type_="not_found_error" if exc.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def on_unexpected(_request, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return _error(500, "internal server error", type_="server_error")

    @app.get("/health")
    async def health():
        if not context.engine.running:
            return _error(503, "the engine is not running", type_="service_unavailable")
        return {"status": "ok", "model": context.model_name, "running": context.engine.active_sequences(),
                "queued": context.engine.queue_depth(), "max_concurrent": context.engine.config.max_concurrent}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        return model_list(context.model_name, context.created, context.engine.max_length)

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str):
        context.check_model(model_id)
        return model_list(context.model_name, context.created, context.engine.max_length)["data"][0]

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req: ChatCompletionRequest = parse_request(ChatCompletionRequest, await request.body())
        context.check_model(req.model)
        prompt = build_chat_prompt(context.tokenizer, req)
        params = context.sampling_params(req, req.completion_limit(), len(prompt.ids), req.logprobs,
                                         req.top_logprobs or 0)
        handle = context.submit(prompt.ids, params, req.skip_special_tokens, "messages")
        outputs = [ChatOutput(context.tokenizer, prompt, want_logprobs=req.logprobs) for _ in range(handle.n)]
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream([handle], _chat_chunks(context, handle, outputs, rid, created, include_usage))
        await _collect(request, [handle], [outputs])
        return {"id": rid, "object": "chat.completion", "created": created, "model": context.model_name,
                "system_fingerprint": None,
                "choices": [o.final_choice(i) for i, o in enumerate(outputs)],
                "usage": usage(handle.prompt_tokens, sum(o.completion_tokens for o in outputs))}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionRequest = parse_request(CompletionRequest, await request.body())
        context.check_model(req.model)
        prompts = [encode_prompt(context.tokenizer, p) for p in req.prompts()]
        handles: list[RequestHandle] = []
        try:
            for ids in prompts:
                params = context.sampling_params(req, req.max_tokens, len(ids), req.logprobs is not None,
                                                 req.logprobs or 0)
                handles.append(context.submit(ids, params, req.skip_special_tokens, "prompt"))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        rid, created = new_id("cmpl"), now()
        outputs = [[CompletionOutput(context.tokenizer, _echo_text(context.tokenizer, p) if req.echo else "")
                    for _ in range(req.n)] for p in req.prompts()]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(handles, _completion_chunks(context, handles, outputs, rid, created, include_usage))
        await _collect(request, handles, outputs)
        choices = [o.final_choice(p * req.n + j) for p, row in enumerate(outputs) for j, o in enumerate(row)]
        completion = sum(o.completion_tokens for row in outputs for o in row)
        return {"id": rid, "object": "text_completion", "created": created, "model": context.model_name,
                "system_fingerprint": None, "choices": choices,
                "usage": usage(sum(h.prompt_tokens for h in handles), completion)}

    return app


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

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _chat_chunks(context: ServerContext, handle: RequestHandle, outputs: list[ChatOutput], rid: str,
                       created: int, include_usage: bool) -> AsyncIterator[str]:
    model = context.model_name
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, logprobs=None, finish_reason=None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _sse(chat_chunk(rid, created, model, [choice], **usage_field))

    for i in range(handle.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    async for ev in handle:
        if isinstance(ev, ErrorEvent):
            yield _sse(error_body(ev.message, "server_error"))
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
        yield _sse(chat_chunk(rid, created, model, [],
                              usage=usage(handle.prompt_tokens, sum(o.completion_tokens for o in outputs))))
    yield _sse("[DONE]")


async def _completion_chunks(context: ServerContext, handles: list[RequestHandle], outputs, rid: str,
                             created: int, include_usage: bool) -> AsyncIterator[str]:
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
        for p, row in enumerate(outputs):          # echo: the prompt text comes first
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
                yield _sse(error_body(ev.message, "server_error"))
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
            yield _sse(completion_chunk(rid, created, model, [],
                                        usage=usage(sum(h.prompt_tokens for h in handles), completion)))
        yield _sse("[DONE]")
    finally:
        for task in tasks:
            task.cancel()


def run_server(context: ServerContext, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info") -> None:
    """Start the engine and serve until interrupted (what `lfmkit serve` runs)."""
    import uvicorn

    context.engine.start()
    try:
        uvicorn.run(create_app(context), host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=5)
    finally:
        context.engine.stop()


__all__ = ["ServerContext", "create_app", "run_server"]
