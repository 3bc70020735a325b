"""Serving an ASGI app inside an existing event loop (for the all-in-one demo and tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process (gasguard.runtime)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install nothing: cancelling the serving task is the shutdown."""
        yield


async def serve_asgi(app: ASGIApp, *, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Run uvicorn until cancelled; set ``ready`` once the socket listens."""
    server = _EmbeddedServer(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(), name=f"uvicorn[{host}:{port}]")
    try:
        while not server.started:
            if task.done():
                await task  # re-raise a failed start (port in use, …)
                raise RuntimeError(f"server on {host}:{port} stopped during start-up")
            await asyncio.sleep(0.01)
        if ready is not None:
            ready.set()
        await asyncio.shield(task)
    finally:
        # Cancelled (or failed): let uvicorn run its lifespan shutdown instead of tearing it apart.
        server.should_exit = True
        await asyncio.wait({task}, timeout=5)
        if not task.done():
            task.cancel()
