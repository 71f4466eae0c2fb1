"""Running the app under uvicorn until SIGINT / SIGTERM, with a graceful shutdown.

On the signal the server stops accepting connections (the listening socket is closed) and
lets running requests finish for `grace` seconds. Then it stops the engine, which ends every
request still running or queued: a stream gets an SSE error event (type
`service_unavailable`) and `data: [DONE]`, a non-streamed request a 503. uvicorn is given a
little longer than the grace period, so those endings reach the clients before it would
cancel anything, and the process exits with status 0.
"""

from __future__ import annotations

import asyncio
import signal
import threading

import uvicorn

from .app import ServerContext, create_app

END_MARGIN = 5.0  # seconds after the grace period for the error events to reach the clients


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose shutdown ends the engine's requests once `grace` seconds passed."""

    def __init__(self, config: uvicorn.Config, context: ServerContext, grace: float):
        super().__init__(config)
        self.context = context
        self.grace = grace

    async def shutdown(self, sockets=None) -> None:
        ender = asyncio.create_task(self._end_requests_after_grace())
        try:
            await super().shutdown(sockets)
        finally:
            ender.cancel()

    async def _end_requests_after_grace(self) -> None:
        await asyncio.sleep(self.grace)
        self.context.shutting_down = True
        await asyncio.to_thread(self.context.engine.stop)  # joins the engine thread: off the loop


def _exit_cleanly(_signum, _frame) -> None:
    raise SystemExit(0)


def run_server(
    context: ServerContext, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", grace: float = 10.0
) -> None:
    """Start the engine and serve until SIGINT / SIGTERM, then shut down gracefully (module docstring)."""
    config = uvicorn.Config(
        create_app(context), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace + END_MARGIN
    )
    server = GracefulServer(config, context, grace)
    # uvicorn re-raises the signal it shut down for once it is done: a SIGTERM then ends here
    # with status 0 (the engine stopped below) instead of killing the process.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if in_main else None
    context.engine.start()
    try:
        server.run()
    finally:
        context.engine.stop()
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["run_server", "GracefulServer"]
