"""An asyncio host awaits its inputs until durable and reads audio and health as async
iterators on its own loop, while the actors run on the pool."""

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actors.connector import RoomData, RoomEvent
from rejoin import (
    AsyncRuntime,
    AudioChunk,
    MemoryStore,
    RuntimeStopped,
    Settings,
    SQLiteStore,
    Stream,
)
from simulations.faulty_store import FaultyStore
from simulations.scale import InstantRooms

USER = "ada@example.com"
ENVIRONMENT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "api-secret-of-the-tests-0123456789",
    "REJOIN_SERVER": "prod",
}


def settings(folder: Path) -> Settings:
    return Settings.from_environment({**ENVIRONMENT, "REJOIN_LOG": str(folder / "prod.db")})


async def joined(rooms: InstantRooms) -> Callable[[RoomEvent], object]:
    """The callback of the first bridge to join, once one has (the bridge starts after the
    session's turn is durable)."""
    for _ in range(500):
        if rooms.callbacks:
            return next(iter(rooms.callbacks.values()))
        await asyncio.sleep(0.01)
    raise AssertionError("no bridge joined within 5 s")


def test_inputs_are_awaited_until_durable_and_audio_arrives_on_the_loop(tmp_path: Path) -> None:
    rooms = InstantRooms(phones=True)

    async def host() -> None:
        async with await AsyncRuntime.start(settings(tmp_path), connector=rooms) as runtime:
            audio = runtime.audio(USER)
            healths = runtime.health_changes()
            position = await runtime.glasses_connected(USER)
            assert position >= 1
            status = await runtime.status(USER)
            assert status is not None
            assert status.bridge is not None
            play = await joined(rooms)
            loop_thread = threading.get_ident()
            # The SDK's thread plays the phone.
            phone = threading.Thread(target=play, args=(RoomData(payload=b"\x01" + b"\x10" * 320),))
            phone.start()
            chunk = await asyncio.wait_for(anext(audio), 5)
            assert (chunk.user, chunk.pcm) == (USER, b"\x10" * 320)
            assert threading.get_ident() == loop_thread
            while (change := await asyncio.wait_for(anext(healths), 5))[1].state != "ok":
                assert change[0] == USER
            phone.join()
            assert await runtime.glasses_disconnected(USER) > position
        assert [chunk async for chunk in audio] == [], "closing the runtime ends its streams"

    asyncio.run(host())
    store = SQLiteStore(tmp_path / "prod.db", read_only=True)
    kinds = [type(e.event).__name__ for e in store.read_all()]
    store.close()
    assert kinds[0] == "GlassesConnected"
    assert "GlassesDisconnected" in kinds


def test_a_slow_reader_loses_the_oldest_items_and_counts_them() -> None:
    async def reader() -> None:
        stream: Stream[int] = Stream(asyncio.get_running_loop(), size=3)
        for item in range(5):
            stream.offer(item)
        stream.close()
        await asyncio.sleep(0)
        assert [item async for item in stream] == [2, 3, 4]
        assert stream.dropped == 2

    asyncio.run(reader())


def test_the_audio_of_one_user_never_reaches_another_users_stream(tmp_path: Path) -> None:
    rooms = InstantRooms(phones=True)

    async def host() -> None:
        async with await AsyncRuntime.start(settings(tmp_path), connector=rooms) as runtime:
            theirs = runtime.audio("bob@example.com")
            everyone: Stream[AudioChunk] = runtime.audio()
            await runtime.glasses_connected(USER)
            (await joined(rooms))(RoomData(payload=b"\x01" + b"\x00" * 320))
            heard = await asyncio.wait_for(anext(everyone), 5)
            assert heard.user == USER
            runtime.close_audio(theirs)
            assert [chunk async for chunk in theirs] == []

    asyncio.run(host())


def test_an_input_awaited_when_the_runtime_closes_raises_runtime_stopped_at_once(
    tmp_path: Path,
) -> None:
    """Its log refuses the input, so it is never durable: closing the runtime ends the wait
    with `RuntimeStopped`, well before the host's own timeout."""
    log = FaultyStore(MemoryStore(), lambda: int(time.monotonic() * 1000))
    log.fail_for(60_000)

    async def host() -> None:
        runtime = await AsyncRuntime.start(settings(tmp_path), store=log, connector=InstantRooms())
        waiting = asyncio.ensure_future(runtime.glasses_connected(USER, timeout_s=30))
        for _ in range(500):
            if log.refused:
                break
            await asyncio.sleep(0.01)
        assert log.refused, "the session tried, the log refused"
        began = time.monotonic()
        await runtime.close()
        with pytest.raises(RuntimeStopped):
            await waiting
        assert time.monotonic() - began < 10

    asyncio.run(host())
