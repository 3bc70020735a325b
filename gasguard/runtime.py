"""Running a service as a process: logging, signals, and one root task whose cancel is the shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

# Libraries that narrate every request or connection at INFO; their warnings still show.
_CHATTY_LOGGERS = ("httpx", "gmqtt", "pgserver", "amqtt", "transitions", "uvicorn.access", "pymodbus")


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr with timestamps; one call per process."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def run(main: Callable[[], Awaitable[None]], *, log_level: str = "INFO") -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM cancels it."""
    configure_logging(log_level)

    async def _root() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await main()

    try:
        asyncio.run(_root())
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopped")
