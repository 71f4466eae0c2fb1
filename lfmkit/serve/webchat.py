"""The web chat page at `/` of `lfmkit serve`: static files shipped in the package, no build step.

`static/` holds plain HTML, CSS and ES modules (no framework, nothing from a CDN). The page
talks to the same OpenAI-compatible API any client uses (`/v1/models`, streamed
`/v1/chat/completions`), sending the API key the user enters as a Bearer token, and keeps
conversations and settings in the browser's localStorage. The server stores nothing.

The page and its files are open (no API key needed, like `/health`): they hold no data. They
are sent with a Content-Security-Policy that allows only this origin's scripts, styles and
connections, as a second line behind the page's own rule of never inserting model output as
HTML.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class _StaticFiles(StaticFiles):
    """StaticFiles whose responses carry `HEADERS`."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response


def add_web_chat(app: FastAPI) -> None:
    """Serve the chat page at `/` and its files under `/static/` (left out of the OpenAPI schema)."""

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)

    app.mount("/static", _StaticFiles(directory=STATIC), name="static")


__all__ = ["add_web_chat"]
