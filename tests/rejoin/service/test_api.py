"""`rejoin serve`'s HTTP API, in process: inputs acknowledged once durable, status, refusals
as one JSON line, the audio WebSocket, probes, metrics and the OpenAPI document."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.connector import RoomData, RoomEvent
from events.sqlite_store import SQLiteStore
from rejoin import Settings
from rejoin.service import Service
from rejoin.service.openapi import checked_in, encoded
from simulations.faulty_store import FaultyStore
from simulations.scale import InstantRooms

USER = "ada@example.com"


def environment(folder: Path, **more: str) -> dict[str, str]:
    """A server `prod` with its log in `folder`, on a port the system chooses."""
    return {
        "LIVEKIT_URL": "ws://127.0.0.1:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "api-secret-of-the-tests-0123456789",
        "REJOIN_SERVER": "prod",
        "REJOIN_LOG": str(folder / "prod.db"),
        "REJOIN_PORT": "0",
        **more,
    }


def settings(folder: Path, **more: str) -> Settings:
    return Settings.from_environment(environment(folder, **more))


class Running:
    def __init__(self, service: Service, rooms: InstantRooms, http: aiohttp.ClientSession) -> None:
        self.service = service
        self.rooms = rooms
        self.http = http
        self.url = f"http://127.0.0.1:{service.port}"

    async def post(self, path: str, **kwargs: object) -> tuple[int, dict[str, object]]:
        async with self.http.post(self.url + path, **kwargs) as response:  # type: ignore[arg-type]
            return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, dict[str, object]]:
        async with self.http.get(self.url + path) as response:
            return response.status, await response.json()

    async def joined(self) -> Callable[[RoomEvent], object]:
        for _ in range(500):
            if self.rooms.callbacks:
                return next(iter(self.rooms.callbacks.values()))
            await asyncio.sleep(0.01)
        raise AssertionError("no bridge joined within 5 s")


async def running(folder: Path, **more: str) -> AsyncIterator[Running]:
    rooms = InstantRooms(phones=True)
    service = Service(settings(folder, **more), connector=rooms)
    await service.start()
    async with aiohttp.ClientSession() as http:
        yield Running(service, rooms, http)
    await service.close()


def serve(folder: Path, test: Callable[[Running], object], **more: str) -> None:
    async def main() -> None:
        async for server in running(folder, **more):
            await test(server)  # type: ignore[misc]

    asyncio.run(main())


def test_a_connect_is_answered_once_durable_and_the_status_shows_the_session(
    tmp_path: Path,
) -> None:
    async def test(server: Running) -> None:
        code, body = await server.post(f"/v1/users/{USER}/connect", json={"epoch": 5})
        assert (code, body["user"]) == (200, USER)
        assert isinstance(body["position"], int)
        code, status = await server.get(f"/v1/users/{USER}")
        assert code == 200
        session = status["session"]
        assert isinstance(session, dict)
        assert (session["state"], session["epoch"]) == ("ACTIVE", 5)
        code, body = await server.post(f"/v1/users/{USER}/disconnect")
        assert code == 200
        code, status = await server.get(f"/v1/users/{USER}")
        assert status["session"]["state"] == "GRACE"  # type: ignore[index]

    serve(tmp_path, test)


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "/v1/users/%20ada/connect",
            None,
            400,
            "a user id holds only the characters of an ASCII e-mail address",
        ),
        (f"/v1/users/{'a' * 321}/connect", None, 400, "a user id has 1 to 320 characters"),
        (f"/v1/users/{USER}/connect", b"{", 400, "the body is not JSON"),
        (
            f"/v1/users/{USER}/connect",
            b'{"epoch": "soon"}',
            400,
            "the body: Expected `int | float | null`, got `str` - at `$.epoch`",
        ),
        (
            f"/v1/users/{USER}/connect",
            b'{"epoch": -1}',
            400,
            "epoch is a whole number from 0 to 9223372036854775807",
        ),
        (
            f"/v1/users/{USER}/connect",
            b'{"when": 1}',
            400,
            "the body: Object contains unknown field `when`",
        ),
        (
            f"/v1/users/{USER}/connect",
            b'{"epoch": 1.5}',
            400,
            "epoch is a whole number from 0 to 9223372036854775807",
        ),
        (f"/v1/users/{USER}/connect", b"x" * 5000, 413, "a body has at most 4096 bytes"),
        (f"/v1/users/{USER}/disconnect", b"{}", 400, "a disconnect takes no body"),
    ],
)
def test_bad_requests_are_refused_with_one_line_of_json(
    tmp_path: Path, path: str, body: bytes | None, status: int, error: str
) -> None:
    async def test(server: Running) -> None:
        assert await server.post(path, data=body) == (status, {"error": error})

    serve(tmp_path, test)


def test_the_audio_path_without_a_websocket_upgrade_says_so(tmp_path: Path) -> None:
    async def test(server: Running) -> None:
        assert await server.get(f"/v1/users/{USER}/audio") == (
            426,
            {"error": "this is a WebSocket: ask for the upgrade"},
        )

    serve(tmp_path, test)


def test_a_user_with_no_session_is_not_found(tmp_path: Path) -> None:
    async def test(server: Running) -> None:
        assert await server.get(f"/v1/users/{USER}") == (
            404,
            {"error": f"{USER} has no session on this server"},
        )

    serve(tmp_path, test)


def test_the_audio_websocket_streams_the_phone_and_the_health(tmp_path: Path) -> None:
    async def test(server: Running) -> None:
        async with server.http.ws_connect(f"{server.url}/v1/users/{USER}/audio") as socket:
            await server.post(f"/v1/users/{USER}/connect")
            play = await server.joined()
            play(RoomData(payload=b"\x01" + b"\x22" * 320))
            audio, healths = b"", []
            while not audio or "ok" not in healths:
                message = await asyncio.wait_for(socket.receive(), 5)
                if message.type == aiohttp.WSMsgType.BINARY:
                    audio = message.data
                else:
                    healths.append(json.loads(message.data)["health"]["state"])
            assert audio == b"\x22" * 320

    serve(tmp_path, test)


def test_the_probes_and_the_metrics_tell_the_truth(tmp_path: Path) -> None:
    async def test(server: Running) -> None:
        assert await server.get("/livez") == (200, {"status": "live"})
        assert await server.get("/readyz") == (200, {"status": "ready"})
        for user in ("a@example.com", "b@example.com"):
            await server.post(f"/v1/users/{user}/connect")
        await server.post("/v1/users/b@example.com/disconnect")
        async with server.http.get(f"{server.url}/metrics") as response:
            text = await response.text()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples[("rejoin_sessions", (("state", "ACTIVE"),))] == 1
        assert samples[("rejoin_sessions", (("state", "GRACE"),))] == 1
        assert samples[("rejoin_input_backlog", ())] == 0

    serve(tmp_path, test)


def test_the_served_openapi_document_is_the_checked_in_one_and_the_generated_one(
    tmp_path: Path,
) -> None:
    assert checked_in() == encoded(), "run python -m rejoin.service.openapi"

    async def test(server: Running) -> None:
        async with server.http.get(f"{server.url}/openapi.json") as response:
            assert await response.read() == checked_in()

    serve(tmp_path, test)


def test_a_failing_log_answers_503_and_the_input_lands_once_the_log_recovers(
    tmp_path: Path,
) -> None:
    """The disk fails for 6 s: the connect is not acknowledged within the API's 5 s and is
    refused with 503; the session keeps the input and appends it once the disk is back."""

    async def main() -> None:
        log = FaultyStore(SQLiteStore(tmp_path / "prod.db"), lambda: int(time.monotonic() * 1000))
        service = Service(settings(tmp_path), connector=InstantRooms(phones=True), store=log)
        await service.start()
        url = f"http://127.0.0.1:{service.port}/v1/users/{USER}"
        log.fail_for(6_000)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/connect") as answer:
                refused = answer.status, await answer.json()
            for _ in range(500):
                async with http.get(url) as answer:
                    if answer.status == 200:
                        break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the session never reached the log")
        await service.close()
        log.close()
        assert refused == (
            503,
            {"error": "the input was not durable within 5 s: the log may be failing; retry"},
        )

    asyncio.run(main())


def test_an_input_the_runtime_stops_under_is_refused_with_503(tmp_path: Path) -> None:
    """The log fails, so the connect waits; the runtime stops before it is durable: the
    glasses hear 503, as for any input the server could not take, not a 500 or a hang."""

    async def main() -> None:
        log = FaultyStore(SQLiteStore(tmp_path / "prod.db"), lambda: int(time.monotonic() * 1000))
        service = Service(settings(tmp_path), connector=InstantRooms(phones=True), store=log)
        await service.start()
        log.fail_for(60_000)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{service.port}/v1/users/{USER}/connect"
            answer = asyncio.ensure_future(http.post(url))
            while service.runtime.backlog() == 0:
                await asyncio.sleep(0.01)
            await service.runtime.close()
            async with await answer as response:
                refused = response.status, await response.json()
        await service.close()
        log.close()
        assert refused == (503, {"error": "this server is stopping: retry on another server"})

    asyncio.run(main())
