"""``python -m registry --workers N``: several worker processes serve one port and stop together."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    """The command line of a live process; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


async def _serve(database_url: str, *args: str, stderr: int | None = None) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GG_")}
    env |= {"GG_DATABASE_URL": database_url, "GG_REGISTRY_PORT": str(port), "GG_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "registry", *args, cwd=PROJECT_ROOT, env=env, stderr=stderr
    )
    return process, port


async def test_two_workers_serve_the_api_and_stop_on_sigterm(database_url: str) -> None:
    """Two uvicorn workers answer on the one port; SIGTERM stops the supervisor and both workers."""
    process, port = await _serve(database_url, "--workers", "2")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http, asyncio.timeout(90):
            while True:
                try:
                    health = await http.get("/health")
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
                    continue
                if health.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert health.json()["database"] == "ok"
            # Workers are started one after the other: wait until both are up (spawned by the supervisor).
            workers: set[int] = set()
            while len(workers) < 2:
                workers = {pid for pid in _children(process.pid) if "spawn_main" in _cmdline(pid)}
                await asyncio.sleep(0.2)
            assert len(workers) == 2
            answers = await asyncio.gather(*(http.get("/households") for _ in range(20)))
            assert {answer.status_code for answer in answers} == {401}  # served, and still authenticated
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        assert not any(_cmdline(pid) for pid in workers)  # reaped with the supervisor, none left orphaned
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_workers_must_be_at_least_one(database_url: str) -> None:
    """A nonsensical worker count is refused with a usage error, before anything is served."""
    process, _ = await _serve(database_url, "--workers", "0", stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert b"--workers must be at least 1" in stderr
