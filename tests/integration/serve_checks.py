"""Checks of `rejoin serve` processes driven over HTTP, with the real `livekit` SDK against the
loopback server. Each runs in its own network namespace, started by `test_serve.py` as
`scripts/netns-run python -m tests.integration.serve_checks CHECK`, and prints one JSON line.

The glasses are played by HTTP calls, the user's phone by a real SDK participant publishing
audio, and what the host hears is read from each server's audio WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from actors.livekit_connector import EventLoopThread, LiveKitSettings
from events.sqlite_store import SQLiteStore
from simulations.phone import Phone
from tests.integration.real_sdk_checks import loopback

USER = "isaiah@mentra.glass"
PORTS = {"prod": 8801, "debug": 8802}
AUDIO_TIMEOUT_S = 15.0


class Serve:
    """One `rejoin serve` process, and the HTTP calls a host makes to it."""

    def __init__(self, name: str, settings: LiveKitSettings, folder: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{PORTS[name]}"
        self.log = folder / f"{name}.db"
        self._environment = {
            **os.environ,
            "LIVEKIT_URL": settings.url,
            "LIVEKIT_API_KEY": settings.api_key,
            "LIVEKIT_API_SECRET": settings.api_secret,
            "REJOIN_SERVER": name,
            "REJOIN_LOG": str(self.log),
            "REJOIN_PORT": str(PORTS[name]),
            "REJOIN_DRAIN_TIMEOUT_S": "30",
            "REJOIN_LOG_LEVEL": "warning",
        }
        self.process: subprocess.Popen[str] | None = None
        self.acknowledged: list[int] = []

    def start(self, command: list[str] | None = None) -> None:
        """Start `rejoin serve`, or `command` with the same settings."""
        self.process = subprocess.Popen(
            [sys.executable, *(command or ["-m", "rejoin.cli", "serve"])],
            env=self._environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(300):
            try:
                async with http.get(f"{self.url}/readyz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} was not ready within 15 s")

    async def glasses(self, http: aiohttp.ClientSession, action: str) -> int:
        async with http.post(f"{self.url}/v1/users/{USER}/{action}") as answer:
            body = await answer.json()
            if answer.status != 200:
                return int(answer.status)
        self.acknowledged.append(body["position"])
        return 200

    async def status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.url}/v1/users/{USER}") as answer:
            body: dict[str, Any] = await answer.json()
            return body

    async def readiness(self, http: aiohttp.ClientSession) -> int:
        async with http.get(f"{self.url}/readyz") as answer:
            return answer.status

    def stop(self) -> str:
        if self.process is None:
            return ""
        self.process.kill()
        _, errors = self.process.communicate(timeout=10)
        return errors


class Listener:
    """A host's audio WebSocket to one server: when audio was last heard, and how much."""

    def __init__(self) -> None:
        self.chunks = 0
        self.last_s = 0.0
        self.healths: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def open(self, http: aiohttp.ClientSession, serve: Serve) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(http, serve))

    async def _listen(self, http: aiohttp.ClientSession, serve: Serve) -> None:
        async with http.ws_connect(f"{serve.url}/v1/users/{USER}/audio") as socket:
            async for message in socket:
                if message.type == aiohttp.WSMsgType.BINARY:
                    self.chunks += 1
                    self.last_s = time.monotonic()
                elif message.type == aiohttp.WSMsgType.TEXT:
                    self.healths.append(json.loads(message.data)["health"]["state"])

    async def audio_after(self, since_s: float) -> float | None:
        """Milliseconds from `since_s` to the first chunk heard after it; `None` if none came
        within the timeout."""
        while time.monotonic() < since_s + AUDIO_TIMEOUT_S:
            if self.last_s > since_s:
                return round((self.last_s - since_s) * 1000)
            await asyncio.sleep(0.01)
        return None

    async def health_settled(self, within_s: float = 2.0) -> list[str]:
        """The last health heard, once it is `ok` or `within_s` has passed: the host hears
        audio before the health that the first chunk leads the session to announce."""
        deadline = time.monotonic() + within_s
        while self.healths[-1:] != ["ok"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.healths[-1:]

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Fleet:
    """The loopback server, `rejoin serve` processes ready to take requests, a listener on
    each one's audio, the user's phone publishing, and an HTTP client."""

    def __init__(self, http: aiohttp.ClientSession, serves: dict[str, Serve]) -> None:
        self.http = http
        self.serves = serves
        self.listeners = {name: Listener() for name in serves}


@contextlib.asynccontextmanager
async def fleet(*names: str) -> AsyncIterator[Fleet]:
    server, settings = loopback()
    loop = EventLoopThread()
    phone = Phone(loop, settings, USER)
    with tempfile.TemporaryDirectory() as folder:
        serves = {name: Serve(name, settings, Path(folder)) for name in names}
        try:
            async with aiohttp.ClientSession() as http:
                running = Fleet(http, serves)
                for serve in serves.values():
                    serve.start()
                for serve in serves.values():
                    await serve.ready(http)
                for name, listener in running.listeners.items():
                    listener.open(http, serves[name])
                phone.join(deadline_s=time.monotonic() + 60)
                phone.publishing = True
                try:
                    yield running
                finally:
                    for listener in running.listeners.values():
                        listener.close()
        finally:
            phone.leave()
            for serve in serves.values():
                serve.stop()
            loop.stop()
            server.stop()


async def seed_story() -> dict[str, Any]:
    """The seed's story through two servers: connect to prod, switch to debug (whose bridge
    kicks prod's), and come back to prod within its grace: audio must come back each time."""
    async with fleet("prod", "debug") as running:
        serves, listeners, http = running.serves, running.listeners, running.http
        times: dict[str, float | None] = {}
        for step, (leaving, joining) in enumerate(
            [(None, "prod"), ("prod", "debug"), ("debug", "prod")]
        ):
            if leaving is not None:
                await serves[leaving].glasses(http, "disconnect")
            began = time.monotonic()
            await serves[joining].glasses(http, "connect")
            times[f"{step}:{joining}"] = await listeners[joining].audio_after(began)
        final = await serves["prod"].status(http)
        return {
            "time_to_audio_ms": times,
            "prod_generation": final["session"]["generation"],
            "prod_health": await listeners["prod"].health_settled(),
        }


async def drain() -> dict[str, Any]:
    """SIGTERM while the glasses are connected: not ready at once, new users refused, the
    bridge and its audio kept until the glasses leave, then exit 0."""
    async with fleet("prod") as running:
        prod, listener, http = running.serves["prod"], running.listeners["prod"], running.http
        began = time.monotonic()
        await prod.glasses(http, "connect")
        first = await listener.audio_after(began)
        assert prod.process is not None
        prod.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        readiness = await prod.readiness(http)
        async with http.post(f"{prod.url}/v1/users/new@example.com/connect") as answer:
            newcomer = answer.status
        heard_before = listener.chunks
        await asyncio.sleep(2.0)
        heard_while_draining = listener.chunks - heard_before
        alive_while_draining = prod.process.poll() is None
        await prod.glasses(http, "disconnect")
        left = time.monotonic()
        code = await asyncio.to_thread(prod.process.wait, 15)
        return {
            "first_audio_ms": first,
            "readiness_after_sigterm": readiness,
            "newcomer_status": newcomer,
            "chunks_while_draining": heard_while_draining,
            "alive_while_draining": alive_while_draining,
            "exit_code": code,
            "exit_after_leave_ms": round((time.monotonic() - left) * 1000),
        }


async def crash() -> dict[str, Any]:
    """SIGKILL while the glasses are connected, then a restart from the same log: the session
    is recovered (in grace: the runtime cannot know the glasses are still there), every
    acknowledged input is in the log, and audio comes back once the host, which held the
    glasses' connection throughout, reports it again."""
    async with fleet("prod") as running:
        prod, before, http = running.serves["prod"], running.listeners["prod"], running.http
        after = Listener()
        began = time.monotonic()
        await prod.glasses(http, "connect")
        first = await before.audio_after(began)
        assert prod.process is not None
        prod.process.send_signal(signal.SIGKILL)
        prod.process.wait(timeout=10)
        killed = time.monotonic()
        prod.start()
        await prod.ready(http)
        recovered = await prod.status(http)
        after.open(http, prod)
        reported = time.monotonic()
        await prod.glasses(http, "connect")
        again = await after.audio_after(reported)
        status = await prod.status(http)
        after.close()
        store = SQLiteStore(prod.log, read_only=True)
        stored = {envelope.position for envelope in store.read_all()}
        store.close()
        return {
            "first_audio_ms": first,
            "restart_ms": round((reported - killed) * 1000),
            "recovered": [recovered["session"][key] for key in ("state", "incarnation")],
            "audio_after_report_ms": again,
            "state_after_report": status["session"]["state"],
            "acknowledged_missing": sorted(set(prod.acknowledged) - stored),
        }


async def example_story() -> dict[str, Any]:
    """examples/glasses_server.py, twice (prod and debug), through the seed's story: the
    glasses' WebSocket hears the app report audio within the timeout after each switch."""
    server, settings = loopback()
    loop = EventLoopThread()
    phone = Phone(loop, settings, USER)
    with tempfile.TemporaryDirectory() as folder:
        apps = {name: Serve(name, settings, Path(folder)) for name in PORTS}
        try:
            for app in apps.values():
                app.start(["examples/glasses_server.py", "--port", str(PORTS[app.name])])
            phone.join(deadline_s=time.monotonic() + 60)
            phone.publishing = True
            async with aiohttp.ClientSession() as http:
                times = {}
                for step, name in enumerate(["prod", "debug", "prod"]):
                    times[f"{step}:{name}"] = await _glasses_hear_audio(http, PORTS[name])
            return {"time_to_heard_ms": times}
        finally:
            phone.leave()
            for app in apps.values():
                app.stop()
            loop.stop()
            server.stop()


async def _glasses_hear_audio(http: aiohttp.ClientSession, port: int) -> float | None:
    """Connect the glasses to the example on `port`; milliseconds until the app reports audio
    heard (`None`: not within the timeout), then leave."""
    url = f"http://127.0.0.1:{port}/glasses/{USER}"
    for _ in range(300):
        try:
            socket = await http.ws_connect(url)
            break
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the example on {port} did not start within 15 s")
    began = time.monotonic()
    heard = None
    try:
        while heard is None and time.monotonic() < began + AUDIO_TIMEOUT_S:
            message = await socket.receive(timeout=AUDIO_TIMEOUT_S)
            if message.type == aiohttp.WSMsgType.TEXT and "heard_ms" in message.data:
                heard = round((time.monotonic() - began) * 1000)
    finally:
        await socket.close()
    return heard


CHECKS = {"seed-story": seed_story, "drain": drain, "crash": crash, "example": example_story}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(CHECKS[sys.argv[1]]())))
