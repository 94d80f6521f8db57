"""Checks that drive the real `livekit` SDK against the loopback server. Each runs in its own
network namespace (WebRTC ignores the loopback interface), started by `test_real_sdk.py` as
`scripts/netns-run python -m tests.integration.real_sdk_checks CHECK`, and prints one JSON line."""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import math
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as rtc_proto

from actors.connector import (
    JoinRequest,
    LookupAnswer,
    RoomData,
    RoomDisconnected,
    RoomEvent,
    RoomHandle,
    RoomJoined,
    RoomReconnecting,
)
from actors.livekit_connector import (
    EventLoopThread,
    LiveKitConnector,
    LiveKitHandle,
    LiveKitSettings,
)
from actors.policy import SUPERVISED
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime
from events.catalog import AudioStalled, BridgeJoined, BridgeJoinFailed, BridgeStarted
from events.memory_store import MemoryStore
from events.sqlite_store import SQLiteStore
from simulations.delay_proxy import DelayProxy
from simulations.live_runner import run_live
from simulations.loopback import LoopbackServer, LoopbackThread
from simulations.phone import Phone
from simulations.process_resources import snapshot as resources
from simulations.scenario import Scenario, load

PORT = 7881


def loopback(tokens_last_s: int | None = None) -> tuple[LoopbackThread, LiveKitSettings]:
    """The loopback server, started, and settings to reach it. `tokens_last_s`: every token,
    the bridges' and the server's refreshed ones, lasts that long, with no leeway past it."""
    secret = secrets.token_urlsafe(32)
    options: dict[str, Any] = {}
    lasting: dict[str, Any] = {}
    if tokens_last_s is not None:
        options = {
            "token_ttl": datetime.timedelta(seconds=tokens_last_s),
            "token_leeway": datetime.timedelta(0),
            "token_refresh_s": tokens_last_s / 2,
        }
        lasting = {"token_ttl_s": tokens_last_s}
    server = LoopbackThread(
        LoopbackServer(api_key="devkey", api_secret=secret, port=PORT, **options)
    )
    server.start()
    return server, LiveKitSettings(
        url=server.url,
        api_key="devkey",
        api_secret=secret,
        single_peer_connection=False,
        **lasting,
    )


def seed_scenario(name: str) -> dict[str, Any]:
    """A seed scenario in real time; grace and times scaled by 1/10 where grace matters."""
    scenario = load(name)
    if name in ("grace-boundary", "post-grace"):
        scale = 0.1

        def scaled(item: Any) -> Any:
            return msgspec.structs.replace(item, at=round(item.at * scale, 3))

        scenario = msgspec.structs.replace(
            scenario,
            grace_s=scenario.grace_s * scale,
            duration_s=(scenario.duration_s or scenario.end_s) * scale,
            step=[scaled(s) for s in scenario.step],
            expect=[
                msgspec.structs.replace(e, at=round(e.at * scale + 0.6, 3)) for e in scenario.expect
            ],
        )
    server, settings = loopback()
    try:
        result = run_live(scenario, SUPERVISED, settings, loopback=server)
    finally:
        server.stop()
    return msgspec.to_builtins(result)  # type: ignore[no-any-return]


ADMIN_REMOVAL = {
    "name": "admin-removal",
    "servers": ["prod"],
    "duration_s": 10,
    "step": [
        {"at": 0.0, "user": "ada@example.com", "connect": "prod"},
        {"at": 3.0, "user": "ada@example.com", "remove_bridge": "prod"},
        {"at": 6.0, "user": "ada@example.com", "disconnect": True},
        {"at": 6.5, "user": "ada@example.com", "connect": "prod"},
    ],
    "expect": [
        {"at": 2.5, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 5.5, "user": "ada@example.com", "no_audio_on": "prod"},
        {"at": 9.0, "user": "ada@example.com", "audio_on": "prod"},
    ],
}


TOKEN_OUTAGE = {
    "name": "token-outage",
    "servers": ["prod"],
    "duration_s": 30,
    "step": [
        {"at": 0.0, "user": "ada@example.com", "connect": "prod"},
        {"at": 4.0, "sfu_outage_s": 8.0},
    ],
    "expect": [
        {"at": 3.5, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 29.0, "user": "ada@example.com", "audio_on": "prod"},
    ],
}


def token_outage() -> dict[str, Any]:
    """An 8 s outage (joins refused, signals dropped), once with tokens that outlive it and once
    with tokens of 2 s and no leeway, which expire during it."""
    return {
        "lasting": live_story(TOKEN_OUTAGE),
        "expiring": live_story(TOKEN_OUTAGE, tokens_last_s=2),
    }


def admin_removal() -> dict[str, Any]:
    """An operator removes the bridge: it stays down until the glasses reconnect."""
    return live_story(ADMIN_REMOVAL)


AUDIO_STALL = {
    "name": "audio-stall-live",
    "servers": ["prod"],
    "duration_s": 10,
    "step": [
        {"at": 0.0, "user": "ada@example.com", "connect": "prod"},
        {"at": 3.0, "audio_stall": "ada@example.com", "for_s": 30},
    ],
    "expect": [
        {"at": 2.5, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 2.5, "user": "ada@example.com", "health_on": "prod", "health": "ok"},
        {"at": 8.0, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 8.0, "user": "ada@example.com", "health_on": "prod", "health": "ok"},
    ],
}

PHONE_LEAVE = {
    "name": "phone-leave-live",
    "servers": ["prod"],
    "duration_s": 14,
    "step": [
        {"at": 0.0, "user": "ada@example.com", "connect": "prod"},
        {"at": 2.0, "phone_leave": "ada@example.com", "for_s": 8},
    ],
    "expect": [
        {"at": 1.5, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 8.5, "user": "ada@example.com", "health_on": "prod", "health": "phone_absent"},
        {"at": 13.5, "user": "ada@example.com", "audio_on": "prod"},
        {"at": 13.5, "user": "ada@example.com", "health_on": "prod", "health": "ok"},
    ],
}


Fault = Callable[[LoopbackThread], object]


def live_story(
    document: dict[str, Any],
    faults: Sequence[tuple[float, Fault]] = (),
    watch: Fault | None = None,
    tokens_last_s: int | None = None,
) -> dict[str, Any]:
    """Run a scenario live on the loopback server, with `faults` done to the server at their
    times (seconds from the start); its result, the log as a story (one `Event: reason or why`
    line per event), the SID of each bridge join, what each fault returned, and each change
    of what `watch` returned, polled every 50 ms, with the seconds since the start it was seen.
    `tokens_last_s`: as `loopback` takes it."""
    scenario = msgspec.convert(document, Scenario)
    server, settings = loopback(tokens_last_s)
    store = MemoryStore()
    returned: list[Any] = [None] * len(faults)
    watched: list[Any] = []
    watched_at: list[float] = []
    done = threading.Event()

    def do(index: int, fault: Fault) -> None:
        returned[index] = fault(server)

    def poll() -> None:
        began = time.monotonic()
        while watch is not None and not done.wait(0.05):
            seen = watch(server)
            if not watched or watched[-1] != seen:
                watched.append(seen)
                watched_at.append(round(time.monotonic() - began, 3))

    timers = [threading.Timer(at, do, (i, fault)) for i, (at, fault) in enumerate(faults)]
    poller = threading.Thread(target=poll, daemon=True)
    try:
        for timer in timers:
            timer.start()
        poller.start()
        result = run_live(scenario, SUPERVISED, settings, loopback=server, store=store)
    finally:
        done.set()
        poller.join()
        for timer in timers:
            timer.cancel()
        server.stop()
    story = [
        f"{type(e.event).__name__}: {getattr(e.event, 'reason', '') or getattr(e.event, 'why', '')}"
        for e in store.read_all()
    ]
    sids = [e.event.participant_sid for e in store.read_all() if isinstance(e.event, BridgeJoined)]
    return msgspec.to_builtins(result) | {  # type: ignore[no-any-return]
        "story": story,
        "bridge_sids": sids,
        "faults": msgspec.to_builtins(returned),
        "watched": watched,
        "watched_at": watched_at,
    }


ADA = "ada@example.com"
BRIDGE = SUPERVISED.identity(ADA, "prod")


def drill(kind: str) -> Fault:
    """A drill the SDK can ask for (`Room.simulate_scenario`), done to ada's bridge."""
    scenario = rtc_proto.SimulateScenario()
    setattr(scenario, kind, True)
    return lambda server: server.simulate(ADA, BRIDGE, scenario)


def leave(reason: int, action: int) -> Fault:
    """A Leave a real server sends on a failure, with that reason and action."""
    return lambda server: server.send_leave(ADA, BRIDGE, reason, action)  # type: ignore[arg-type]


def bridge_sids(server: LoopbackThread) -> list[str]:
    return [p.sid for p in server.participants(ADA) if p.identity == BRIDGE]


DRILL_EVERY_S = 4.0
DRILLS: list[tuple[str, Fault]] = [
    # The SDK's SIGNAL_RECONNECT closes its own signal; the server sees a drop.
    ("signal-reconnect", lambda server: (bridge_sids(server), server.drop_signal(ADA, BRIDGE))),
    ("sid-after-resume", bridge_sids),
    ("node-failure", drill("node_failure")),
    ("migration", drill("migration")),
    ("server-leave", drill("server_leave")),
    # The SDK's DISCONNECT_SIGNAL_ON_RESUME: the drill, then its own signal close.
    (
        "disconnect-signal-on-resume",
        lambda server: (
            drill("disconnect_signal_on_resume")(server),
            server.drop_signal(ADA, BRIDGE),
        ),
    ),
    # A real server asks for a full reconnect after a failed negotiation ...
    (
        "leave-reconnect",
        leave(models.DisconnectReason.STATE_MISMATCH, rtc_proto.LeaveRequest.RECONNECT),
    ),
    # ... and for a resume when the transport failed.
    (
        "leave-resume",
        leave(models.DisconnectReason.CONNECTION_TIMEOUT, rtc_proto.LeaveRequest.RESUME),
    ),
]


def drills() -> dict[str, Any]:
    """Every drill in turn on ada's bridge, DRILL_EVERY_S apart: her audio is back 3.5 s after
    each."""
    times = [3.0 + index * DRILL_EVERY_S for index in range(len(DRILLS))]
    times[1] = times[0] + 3.0  # the SID is read once the resume is through
    document = {
        "name": "drills-live",
        "servers": ["prod"],
        "duration_s": times[-1] + DRILL_EVERY_S + 1,
        "step": [{"at": 0.0, "user": ADA, "connect": "prod"}],
        "expect": [{"at": 2.5, "user": ADA, "audio_on": "prod"}]
        + [{"at": at + 3.5, "user": ADA, "audio_on": "prod"} for at in times[:1] + times[2:]]
        + [{"at": times[-1] + DRILL_EVERY_S, "user": ADA, "audio_on": "prod"}],
    }
    result = live_story(
        document, [(at, fault) for at, (_, fault) in zip(times, DRILLS, strict=True)]
    )
    result["faults"] = dict(zip([name for name, _ in DRILLS], result["faults"], strict=True))
    return result


def crash() -> dict[str, Any]:
    """prod is SIGKILLed at 4 s: its bridge lingers in the room while a new process starts
    on its log, whose rejoin of the same identity replaces it; the audio is back."""
    document = {
        "name": "crash-live",
        "servers": ["prod"],
        "duration_s": 14,
        "step": [{"at": 0.0, "user": ADA, "connect": "prod"}, {"at": 4.0, "crash": "prod"}],
        "expect": [
            {"at": 3.5, "user": ADA, "audio_on": "prod"},
            {"at": 13.0, "user": ADA, "audio_on": "prod"},
        ],
    }
    return live_story(document, watch=bridge_sids)


def audio_stall() -> dict[str, Any]:
    """The data path to the bridge dies while it stays in the room, for 30 s."""
    return live_story(AUDIO_STALL)


def phone_leave() -> dict[str, Any]:
    """The phone leaves the room for 8 s and comes back; the glasses stay."""
    return live_story(PHONE_LEAVE)


def muted_phone(quiet_s: float = 3.0) -> dict[str, Any]:
    """The phone sets `rejoin.muted` and stops sending for longer than the stall threshold:
    no stall, no restart, and health `ok`; unmuted, its audio is back on the same bridge."""
    server, settings = loopback()
    loop = EventLoopThread()
    phone = Phone(loop, settings, "ada")
    phone.publishing = True
    phone.join(deadline_s=time.monotonic() + quiet_s + 20)
    executor, store = PoolExecutor(), MemoryStore()
    connector = LiveKitConnector(settings, loop)
    chunks: list[int] = []
    runtime = Runtime(
        server="prod",
        executor=executor,
        store=store,
        connector=connector,
        audio_sink=lambda chunk: chunks.append(chunk.sequence),
    )

    def health() -> str | None:
        status = runtime.status("ada")
        return status.health.state if status is not None and status.health is not None else None

    def until(condition: Any, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    def set_muted(muted: str) -> None:
        async def update() -> None:
            client = api.LiveKitAPI(settings.http_url, settings.api_key, settings.api_secret)
            try:
                request = api.UpdateParticipantRequest(
                    room="ada", identity="ada", attributes={"rejoin.muted": muted}
                )
                await client.room.update_participant(request)
            finally:
                await client.aclose()

        loop.submit(update()).result(timeout=10)

    try:
        runtime.glasses_connected("ada").wait(timeout_s=5)
        until(lambda: health() == "ok")
        before = health()
        set_muted("true")
        phone.publishing = False
        time.sleep(quiet_s)
        status = runtime.status("ada")
        muted = {
            "health": status.health.reason if status and status.health else None,
            "phone_muted": status.bridge.phone_muted if status and status.bridge else None,
        }
        heard = len(chunks)
        set_muted("false")
        phone.publishing = True
        until(lambda: len(chunks) > heard + 5)
        after = len(chunks) - heard
    finally:
        runtime.stop()
        connector.close()
        executor.shutdown()
        phone.leave()
        loop.stop()
        server.stop()
    events = [e.event for e in store.read_all()]
    return {
        "before": before,
        "while_muted": muted,
        "chunks_after_unmute": after,
        "stalls": sum(isinstance(e, AudioStalled) for e in events),
        "bridges": sum(isinstance(e, BridgeStarted) for e in events),
    }


def bad_token() -> dict[str, Any]:
    server, settings = loopback()
    wrong = msgspec.structs.replace(settings, api_secret="not-the-secret")
    connector = LiveKitConnector(wrong)
    events: list[RoomEvent] = []
    done = threading.Event()

    def on_event(event: RoomEvent) -> None:
        events.append(event)
        done.set()

    request = JoinRequest(
        room="ada",
        identity="cloud-agent:ada",
        server="prod",
        epoch=1,
        generation=1,
        phone_identity="ada",
    )
    started = time.monotonic()
    connector.join(request, on_event)
    done.wait(20)
    elapsed = time.monotonic() - started
    connector.close()
    server.stop()
    return {
        "events": [msgspec.to_builtins(e) | {"kind": type(e).__name__} for e in events],
        "seconds": round(elapsed, 2),
        "secret_leaked": any(
            "not-the-secret" in json.dumps(msgspec.to_builtins(e)) for e in events
        ),
    }


def refused_credentials(seconds: float = 6.0) -> dict[str, Any]:
    """A runtime whose API secret the server refuses: one join, a permanent error, and no
    retries with backoff (which would hammer the server for ever)."""
    server, settings = loopback()
    wrong = msgspec.structs.replace(settings, api_secret="not-the-secret-either")
    executor = PoolExecutor()
    connector = LiveKitConnector(wrong)
    store = MemoryStore()
    runtime = Runtime(server="prod", executor=executor, store=store, connector=connector)
    try:
        runtime.glasses_connected("ada").wait(timeout_s=5)
        time.sleep(seconds)
        status = runtime.session("ada")
    finally:
        runtime.stop()
        connector.close()
        executor.shutdown()
        server.stop()
    return {
        "events": [type(e.event).__name__ for e in store.read_all()],
        "permanent": [
            e.event.permanent for e in store.read_all() if isinstance(e.event, BridgeJoinFailed)
        ],
        "unavailable": status.unavailable if status is not None else None,
    }


def join_request(generation: int) -> JoinRequest:
    return JoinRequest(
        room="ada",
        identity="cloud-agent:ada",
        server="prod",
        epoch=generation,
        generation=generation,
        phone_identity="ada",
    )


class Recorder:
    """A bridge's callback: the events one join reported, and when it joined."""

    def __init__(self) -> None:
        self.events: list[RoomEvent] = []
        self.times: list[float] = []
        """When each event came (`time.monotonic()`)."""
        self.joined = threading.Event()
        self.joined_at: float | None = None
        self.reconnected = threading.Event()

    def __call__(self, event: RoomEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        if isinstance(event, RoomReconnecting) and not event.reconnecting:
            self.reconnected.set()
        if isinstance(event, RoomJoined):
            self.joined_at = time.monotonic()
            self.joined.set()

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events if not isinstance(e, RoomData)]

    def story(self, since: float) -> list[list[Any]]:
        """Each event but data as `[kind, reason, seconds since `since`]`."""
        return [
            [type(e).__name__, getattr(e, "reason", None), round(at - since, 2)]
            for e, at in zip(self.events, self.times, strict=True)
            if not isinstance(e, RoomData)
        ]

    def kicked(self) -> bool:
        return any(
            isinstance(e, RoomDisconnected) and e.reason == "DUPLICATE_IDENTITY"
            for e in self.events
        )


def abandoned_join(delay_s: float = 1.0, settle_s: float = 2.5) -> dict[str, Any]:
    """A join caught in flight on a slow path to the server, given up on two ways: its bridge
    leaves it, or it outlasts `connect_timeout_s`; then a newer join of the same identity takes
    the fast path. The late one must neither report to its bridge nor kick the newer one."""
    server, settings = loopback()
    loop = EventLoopThread()
    proxy = DelayProxy("127.0.0.1", PORT, delay_s)
    loop.submit(proxy.start()).result(timeout=5)
    slow = msgspec.structs.replace(settings, url=f"ws://127.0.0.1:{proxy.port}")
    outcome: dict[str, Any] = {}
    for way, patience_s in (("left", None), ("timed_out", delay_s / 4)):
        connect_timeout_s = patience_s or slow.connect_timeout_s
        connector = LiveKitConnector(
            msgspec.structs.replace(slow, connect_timeout_s=connect_timeout_s), loop
        )
        proxy.delay_s = delay_s
        older, newer = Recorder(), Recorder()
        handle = connector.join(join_request(1), older)
        time.sleep(delay_s / 5 if patience_s is None else patience_s + 0.1)
        handle.leave()
        proxy.delay_s = 0.0
        # The newer join gets the usual patience: only the older one was to run out of it.
        connector.settings = slow
        asked = time.monotonic()
        latest = connector.join(join_request(2), newer)
        newer.joined.wait(15)
        time.sleep(settle_s)
        outcome[way] = {
            "older": older.kinds(),
            "newer": newer.kinds(),
            "newer_joined_after_s": (
                round(newer.joined_at - asked, 2) if newer.joined_at is not None else None
            ),
            "participants": [p.metadata for p in server.participants("ada")],
            "handles": connector.live_handles,
        }
        latest.leave()
        latest.wait_released(10)
        outcome[way]["handles_after_leave"] = connector.live_handles
        connector.close()
    loop.submit(proxy.stop()).result(timeout=5)
    loop.stop()
    server.stop()
    return outcome


def in_room(server: LoopbackThread, within_s: float = 10.0) -> float:
    """Wait until someone is in ada's room; when that was seen (`time.monotonic()`)."""
    deadline = time.monotonic() + within_s
    while not server.participants("ada"):
        if time.monotonic() > deadline:
            raise AssertionError(f"nobody joined ada's room within {within_s:g} s")
        time.sleep(0.005)
    return time.monotonic()


def overtaken_in_flight(observe_s: float = 20.0) -> dict[str, Any]:
    """A bridge's join is overtaken in flight: once it is in the room, before its peer
    connection is up, another server's join of the same identity arrives. The server sends the
    older one a Leave (DUPLICATE_IDENTITY, DISCONNECT) and closes its signal and peer
    connections, as livekit-server does. What the pinned SDK tells each join, and when, with the
    older's connect given `observe_s` instead of the connector's usual patience."""
    server, settings = loopback()
    loop = EventLoopThread()
    patient = msgspec.structs.replace(settings, connect_timeout_s=observe_s)
    connectors = [LiveKitConnector(patient, loop), LiveKitConnector(settings, loop)]
    older, newer = Recorder(), Recorder()
    started = time.monotonic()
    handles = [connectors[0].join(join_request(1), older)]
    overtaken_at = in_room(server)
    handles.append(connectors[1].join(join_request(2), newer))
    time.sleep(observe_s)
    outcome = {
        "overtaken_after_s": round(overtaken_at - started, 3),
        "older": older.story(started),
        "newer": newer.story(started),
        "holder": [p.metadata for p in server.participants("ada")],
        "handles": sum(c.live_handles for c in connectors),
    }
    for handle in handles:
        handle.leave()
    for connector in connectors:
        connector.close()
    outcome["handles_after_leave"] = sum(c.live_handles for c in connectors)
    loop.stop()
    server.stop()
    return outcome


def fleet_overtaken(observe_s: float = 22.0) -> dict[str, Any]:
    """Two servers share one log and the room service fails. dev's join (the user's newest
    connection, epoch 2) is overtaken in flight by debug's (an older connection, epoch 1, acted
    on late). dev gives its join up on the fleet log's word and joins again; its first join,
    waited out, lands when the SDK's 15 s wait ends and kicks dev's new bridge once, and dev
    joins again. What each server's log tells, and who holds the identity at the end."""
    server, settings = loopback()
    loop = EventLoopThread()
    phone = Phone(loop, settings, "ada")
    phone.publishing = True
    phone.join(deadline_s=time.monotonic() + observe_s + 5)
    server.fail_room_service_for(observe_s + 30)
    store = MemoryStore()
    executors = {name: PoolExecutor() for name in ("debug", "dev")}
    connectors = {name: LiveKitConnector(settings, loop) for name in executors}
    heard: list[tuple[str, float]] = []
    runtimes = {
        name: Runtime(
            server=name,
            executor=executors[name],
            store=store,
            connector=connectors[name],
            shared_log=True,
            audio_sink=lambda chunk: heard.append((chunk.server, time.monotonic())),
        )
        for name in executors
    }
    started_ms = time.time_ns() // 1_000_000
    try:
        runtimes["dev"].glasses_connected("ada", epoch=2).wait(timeout_s=5)
        # The phone is in the room already: wait for dev's bridge to be there too.
        deadline = time.monotonic() + 10
        while len(server.participants("ada")) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        runtimes["debug"].glasses_connected("ada", epoch=1).wait(timeout_s=5)
        time.sleep(observe_s)
        holder = [p.metadata for p in server.participants("ada") if p.identity != "ada"]
        now = time.monotonic()
        heard_lately = {
            name: any(now - at < 1.0 for who, at in heard if who == name) for name in runtimes
        }
    finally:
        for runtime in runtimes.values():
            runtime.stop()
        handles = 0
        for connector in connectors.values():
            connector.close()
            handles += connector.live_handles
        for executor in executors.values():
            executor.shutdown()
        phone.leave()
        loop.stop()
        server.stop()
    story = [
        [
            envelope.server,
            type(envelope.event).__name__,
            getattr(envelope.event, "reason", "") or getattr(envelope.event, "why", ""),
            round((envelope.time_ms - started_ms) / 1000, 2),
        ]
        for envelope in store.read_all()
        if not envelope.stream.startswith("fleet/")
    ]
    return {
        "story": story,
        "holder": holder,
        "heard_lately": heard_lately,
        "handles": handles,
    }


class LeakRig:
    """What the leak cycles share: one loopback server, one SDK event loop, a slow path to the
    server (for joins caught in flight) and a durable log (for crashes and restarts)."""

    def __init__(self, folder: Path) -> None:
        self.server, self.settings = loopback()
        self.loop = EventLoopThread()
        self.proxy = DelayProxy("127.0.0.1", PORT, 0.0)
        self.loop.submit(self.proxy.start()).result(timeout=5)
        slow = msgspec.structs.replace(self.settings, url=f"ws://127.0.0.1:{self.proxy.port}")
        self.connector = LiveKitConnector(slow, self.loop)
        self.generation = 0
        self.kicked_newer = 0
        """Joins kicked by one made before them: a late join acting against a newer one."""
        self.log = folder / "rejoin.db"
        self.process: Process | None = None

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def supersede(self, older: RoomHandle) -> None:
        """A newer join of the identity: once it is in the room and `older` is released (kicked,
        or waited out), it leaves."""
        events = Recorder()
        newer = self.connector.join(join_request(self.next_generation()), events)
        _joined(events)
        _released(older)
        newer.leave()
        _released(newer)
        self.kicked_newer += events.kicked()

    def connectors(self) -> list[LiveKitConnector]:
        live = [self.connector]
        if self.process is not None:
            live.append(self.process.connector.inner)
        return live

    def snapshot(self) -> dict[str, Any]:
        gc.collect()
        tasks = self.loop.submit(_count_tasks()).result(timeout=5)
        return msgspec.to_builtins(resources()) | {  # type: ignore[no-any-return]
            "asyncio_tasks": tasks,
            "sdk_handles": sum(c.live_handles for c in self.connectors()),
            "participants": len(self.server.participants("ada")),
        }

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.connector.close()
        self.loop.submit(self.proxy.stop()).result(timeout=5)
        self.loop.stop()
        self.server.stop()


def kick_cycle(rig: LeakRig) -> None:
    """A second join of the identity kicks the first, which lets go by itself; the second
    leaves."""
    first = Recorder()
    older = rig.connector.join(join_request(rig.next_generation()), first)
    _joined(first)
    rig.supersede(older)


def abandon_cycle(rig: LeakRig, delay_s: float = 0.5) -> None:
    """A join caught in flight is left; a newer one of the identity follows at once, and
    leaves once in the room."""
    rig.proxy.delay_s = delay_s
    older = rig.connector.join(join_request(rig.next_generation()), Recorder())
    time.sleep(delay_s / 5)
    older.leave()
    rig.proxy.delay_s = 0.0
    rig.supersede(older)


def reconnect_cycle(rig: LeakRig) -> None:
    """The server drops the bridge's signal without a leave; the SDK reconnects by itself (a
    full rejoin: the loopback server refuses resumes for now), and the bridge then leaves."""
    events = Recorder()
    handle = rig.connector.join(join_request(rig.next_generation()), events)
    _joined(events)
    if not rig.server.drop_signal("ada", "cloud-agent:ada"):
        raise AssertionError("the bridge was not in the room")
    if not events.reconnected.wait(20):
        raise AssertionError(f"the SDK did not reconnect within 20 s: {events.kinds()}")
    handle.leave()
    _released(handle)


def crash_cycle(rig: LeakRig) -> None:
    """The runtime dies without leaving its room, and a new one starts on the same log in the
    same process; its bridge's join kicks the one the dead runtime left behind."""
    if rig.process is None:
        rig.process = Process(rig)
        rig.process.connect()
    dead = rig.process
    dead.crash()
    rig.process = Process(rig)
    rig.process.connect()
    dead.connector.inner.close()
    if dead.connector.inner.live_handles:
        raise AssertionError("the dead runtime's bridge was never released")


class Severed:
    """A connector whose process died: its bridges' leaves never reach the room."""

    def __init__(self, inner: LiveKitConnector) -> None:
        self.inner = inner
        self.dead = False

    def join(self, request: JoinRequest, on_event: Callable[[RoomEvent], object]) -> RoomHandle:
        return _SeveredHandle(self, self.inner.join(request, on_event))

    def lookup_holder(
        self, room: str, identity: str, reply: Callable[[LookupAnswer], object]
    ) -> None:
        self.inner.lookup_holder(room, identity, reply)


class _SeveredHandle:
    def __init__(self, owner: Severed, inner: RoomHandle) -> None:
        self._owner = owner
        self._inner = inner

    def leave(self) -> None:
        if not self._owner.dead:
            self._inner.leave()


class Process:
    """One runtime on the rig's log, as one server process runs it."""

    def __init__(self, rig: LeakRig) -> None:
        self.connector = Severed(LiveKitConnector(rig.settings, rig.loop))
        self.executor = PoolExecutor()
        self.store = SQLiteStore(rig.log)
        self.runtime = Runtime(
            server="prod", executor=self.executor, store=self.store, connector=self.connector
        )

    def connect(self) -> None:
        self.runtime.glasses_connected("ada").wait(timeout_s=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = self.runtime.status("ada")
            bridge = status.bridge if status is not None else None
            if bridge is not None and bridge.sdk_state == "connected":
                return
            time.sleep(0.02)
        raise AssertionError("the runtime's bridge did not join within 20 s")

    def crash(self) -> None:
        """Die as a process does: no leave reaches the room; the log's file is closed."""
        self.connector.dead = True
        self.executor.shutdown()
        self.store.close()

    def stop(self) -> None:
        self.runtime.stop()
        self.executor.shutdown()
        self.connector.inner.close()
        self.store.close()


CYCLES: dict[str, Callable[[LeakRig], None]] = {
    "kick": kick_cycle,
    "abandoned_join": abandon_cycle,
    "reconnect": reconnect_cycle,
    "crash_restart": crash_cycle,
}
"""The kinds of cycle the leak check repeats: one function each."""


def leak_cycles(cycles: int | None = None, warm_up: int = 5) -> dict[str, Any]:
    """Each kind of cycle `cycles` times (`REJOIN_LEAK_CYCLES`, default 10), after `warm_up`
    cycles that let the SDK and aiortc start their pools (once, not growth); what the process
    holds before, half-way and after each kind. `REJOIN_LEAK_KINDS` (names of `CYCLES`, with
    commas) runs only those kinds."""
    count = cycles or int(os.environ.get("REJOIN_LEAK_CYCLES", "10"))
    chosen = os.environ.get("REJOIN_LEAK_KINDS")
    kinds_to_run = {name: CYCLES[name] for name in chosen.split(",")} if chosen else CYCLES
    with tempfile.TemporaryDirectory() as folder:
        rig = LeakRig(Path(folder))
        kinds: dict[str, Any] = {}
        try:
            for name, cycle in kinds_to_run.items():
                for _ in range(warm_up):
                    cycle(rig)
                before = middle = rig.snapshot()
                started = time.monotonic()
                for done in range(1, count + 1):
                    cycle(rig)
                    if done == count // 2:
                        middle = rig.snapshot()
                seconds = time.monotonic() - started
                time.sleep(1)
                kinds[name] = {
                    "before": before,
                    "middle": middle,
                    "after": rig.snapshot(),
                    "ms_per_cycle": round(1000 * seconds / count),
                }
            kicked = rig.kicked_newer
        finally:
            rig.close()
    return {"cycles": count, "kinds": kinds, "kicked_newer": kicked}


def _joined(recorder: Recorder) -> None:
    if not recorder.joined.wait(20):
        raise AssertionError(f"no join within 20 s: {recorder.kinds()}")


def _released(handle: RoomHandle) -> None:
    assert isinstance(handle, LiveKitHandle)
    if not handle.wait_released(20):
        raise AssertionError("a handle was not released within 20 s")


def track_audio(seconds: float = 2.0) -> dict[str, Any]:
    """The phone publishes a 440 Hz microphone track; the bridge's connector hands it on as
    100 ms chunks of 16 kHz PCM16LE."""
    server, settings = loopback()
    loop = EventLoopThread()
    connector = LiveKitConnector(settings, loop)
    chunks: list[bytes] = []

    def on_event(event: RoomEvent) -> None:
        if isinstance(event, RoomData):
            chunks.append(event.payload)

    publishing = loop.submit(_publish_tone(settings, seconds + 4))
    time.sleep(1)
    connector.join(
        JoinRequest(
            room="ada",
            identity="cloud-agent:ada",
            server="prod",
            epoch=1,
            generation=1,
            phone_identity="ada",
        ),
        on_event,
    )
    time.sleep(seconds + 1)
    received = list(chunks)
    connector.close()
    publishing.result(timeout=15)
    loop.stop()
    server.stop()
    loud = [
        c
        for c in received
        if max(
            abs(int.from_bytes(c[i : i + 2], "little", signed=True))
            for i in range(1, len(c) - 1, 2)
        )
        > 1000
    ]
    return {
        "chunks": len(received),
        "sizes": sorted({len(c) for c in received}),
        "loud": len(loud),
        "sequences": [c[0] for c in received[:5]],
    }


async def _publish_tone(settings: LiveKitSettings, seconds: float) -> None:
    room = rtc.Room()
    token = settings.token(
        identity="ada",
        room="ada",
        grants=api.VideoGrants(
            room_join=True,
            room="ada",
            can_publish=True,
            can_subscribe=False,
            can_publish_data=False,
        ),
    )
    await asyncio.wait_for(
        room.connect(settings.url, token, settings.room_options(auto_subscribe=False)), 15
    )
    source = rtc.AudioSource(48_000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await asyncio.wait_for(room.local_participant.publish_track(track, options), 15)
    samples = 480
    for index in range(int(seconds * 100)):
        frame = rtc.AudioFrame.create(48_000, 1, samples)
        data = frame.data
        for i in range(samples):
            data[i] = int(8000 * math.sin(2 * math.pi * 440 * (index * samples + i) / 48_000))
        await source.capture_frame(frame)
    await room.disconnect()


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


CHECKS = {
    "admin-removal": admin_removal,
    "token-outage": token_outage,
    "audio-stall": audio_stall,
    "muted-phone": muted_phone,
    "phone-leave": phone_leave,
    "bad-token": bad_token,
    "refused-credentials": refused_credentials,
    "leak-cycles": leak_cycles,
    "abandoned-join": abandoned_join,
    "overtaken-in-flight": overtaken_in_flight,
    "fleet-overtaken": fleet_overtaken,
    "track-audio": track_audio,
    "drills": drills,
    "crash": crash,
}


if __name__ == "__main__":
    name = sys.argv[1]
    outcome = seed_scenario(sys.argv[2]) if name == "scenario" else CHECKS[name]()
    print(json.dumps(outcome))
