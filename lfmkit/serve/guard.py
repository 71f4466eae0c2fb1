"""The ASGI middleware in front of every route: auth, the body-size limit, counting, a last-resort 500.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so streaming and client disconnects pass
through untouched.

- Auth: with an API key, `/v1/*` needs `Authorization: Bearer KEY`. The key is compared as
  UTF-8 bytes with `hmac.compare_digest` (constant time), so a non-ASCII key works when the
  client sends it UTF-8 encoded, as HTTP clients do.
- Body size: a Content-Length over the limit is refused before anything is read; a body with
  no Content-Length (`Transfer-Encoding: chunked`) is counted as it streams in, and reading
  stops with a 413 the moment it passes the limit, so memory per request stays bounded.
"""

from __future__ import annotations

import hmac
import logging

from starlette.responses import JSONResponse

from .limits import BodyTooLarge
from .schema import error_body, to_json

log = logging.getLogger("lfmkit.server")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openapi.json")


class JSONBody(JSONResponse):
    """A JSON response that always encodes (see `schema.to_json`)."""

    def render(self, content) -> bytes:
        return to_json(content).encode("utf-8")


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict | None = None,
) -> JSONBody:
    """OpenAI's error shape with `status`."""
    return JSONBody(error_body(message, type_, param, code), status_code=status, headers=headers)


def too_large(exc: BodyTooLarge) -> JSONBody:
    """The 413 response; the connection is closed since the rest of the body is not read."""
    return error_response(exc.status, exc.message, code=exc.code, headers={"Connection": "close"})


def bearer_token(headers) -> bytes:
    """The raw bytes after `Bearer ` in the Authorization header (empty when absent)."""
    header = dict(headers or []).get(b"authorization", b"")
    return header[7:].strip() if header[:7].lower() == b"bearer " else b""


class GuardMiddleware:
    """Auth on /v1/*, the body-size limit, request counting and a last-resort 500 (module docstring)."""

    def __init__(self, app, context):
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

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, counting_send)
                return
            await self.app(scope, self._limited(receive), counting_send)
        except BodyTooLarge as exc:  # read outside a route (a route's own handler answers 413 itself)
            if not status["started"]:
                await too_large(exc)(scope, receive, counting_send)
        except Exception:
            log.exception("unhandled error on %s", path)
            if not status["started"]:
                await error_response(500, "internal server error", type_="server_error")(scope, receive, counting_send)
        finally:
            metrics.requests.inc(endpoint=endpoint, status=str(status["code"]))

    def _refusal(self, scope) -> JSONBody | None:
        """The response for a request refused before its body is read: bad key, or too long."""
        key = self.context.api_key
        if key and scope.get("path", "").startswith("/v1/"):
            if not hmac.compare_digest(bearer_token(scope.get("headers")), key.encode("utf-8")):
                return error_response(
                    401,
                    "invalid or missing API key: send 'Authorization: Bearer <key>'",
                    type_="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.context.max_body_bytes):
            return too_large(BodyTooLarge(self.context.max_body_bytes))
        return None

    def _limited(self, receive):
        """`receive` that raises BodyTooLarge once the body read so far passes the limit."""
        limit, received = self.context.max_body_bytes, 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


__all__ = ["GuardMiddleware", "JSONBody", "error_response", "too_large", "ENDPOINTS"]
