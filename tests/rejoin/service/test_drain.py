"""Draining: readiness turns 503 first, new sessions are refused, connected glasses keep their
bridges until they leave or the drain timeout passes, then the service stops."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.rejoin.service.test_api import USER, Running, environment, running


def test_a_drain_waits_for_connected_glasses_to_leave(tmp_path: Path) -> None:
    async def main() -> None:
        async for server in running(tmp_path, REJOIN_DRAIN_TIMEOUT_S="60"):
            await server.post(f"/v1/users/{USER}/connect")
            server.service.drain()
            stopped = asyncio.create_task(server.service.run())
            assert await server.get("/readyz") == (503, {"status": "draining"})
            assert await server.post("/v1/users/new@example.com/connect") == (
                503,
                {"error": "this server is draining: connect the glasses to another server"},
            )
            code, _ = await server.post(f"/v1/users/{USER}/connect")
            assert code == 200, "a user whose session is here still reconnects"
            await asyncio.sleep(0.5)
            assert not stopped.done(), "the glasses are still connected"
            assert server.service.runtime.server.runtime.live_bridges() != {}
            await server.post(f"/v1/users/{USER}/disconnect")
            await asyncio.wait_for(stopped, 5)

    asyncio.run(main())


def test_a_drain_ends_at_its_timeout_whoever_is_still_connected(tmp_path: Path) -> None:
    async def main() -> None:
        async for server in running(tmp_path, REJOIN_DRAIN_TIMEOUT_S="0.3"):
            await server.post(f"/v1/users/{USER}/connect")
            began = asyncio.get_running_loop().time()
            server.service.drain()
            await asyncio.wait_for(server.service.run(), 5)
            assert asyncio.get_running_loop().time() - began >= 0.3

    asyncio.run(main())


async def _second_drain_stops_at_once(server: Running) -> None:
    await server.post(f"/v1/users/{USER}/connect")
    server.service.drain()
    server.service.stop_now()
    await asyncio.wait_for(server.service.run(), 5)


def test_stopping_during_a_drain_does_not_wait(tmp_path: Path) -> None:
    async def main() -> None:
        async for server in running(tmp_path, REJOIN_DRAIN_TIMEOUT_S="60"):
            await _second_drain_stops_at_once(server)

    asyncio.run(main())


def serve_process(folder: Path, port: int) -> subprocess.Popen[str]:
    """`rejoin serve` in a process of its own; its LiveKit answers nothing (port 9)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rejoin.cli", "serve"],
        env={
            **os.environ,
            **environment(folder, REJOIN_PORT=str(port), LIVEKIT_URL="ws://127.0.0.1:9"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_stops_an_idle_serve_process_with_exit_0_logging_json(tmp_path: Path) -> None:
    port = _free_port()
    process = serve_process(tmp_path, port)
    try:
        _await_ready(port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        out, _ = process.communicate()
    assert (tmp_path / "prod.db").exists()
    messages = [json.loads(line)["message"] for line in out.splitlines()]
    assert messages[0] == f"serving prod on 127.0.0.1:{port}"
    assert messages[-1] == "stopped prod"


def test_a_second_sigterm_stops_a_draining_process_at_once(tmp_path: Path) -> None:
    port = _free_port()
    process = serve_process(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        _await_ready(port)
        connect = urllib.request.Request(f"{url}/v1/users/{USER}/connect", method="POST")
        with urllib.request.urlopen(connect, timeout=10) as answer:
            assert answer.status == 200
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/readyz", timeout=1).close()
        assert refused.value.code == 503
        assert process.poll() is None, "the glasses are connected: the drain waits (30 s)"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()


def _await_ready(port: int) -> None:
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("rejoin serve was not ready within 10 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
