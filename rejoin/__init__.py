"""rejoin: keeps a server-side LiveKit bridge in its user's room across reconnects and server
switches, and records every decision it makes.

This package is the public API; every other module is private by convention, as in pykka.

    from rejoin import Server, Settings

    with Server(Settings.from_environment(), audio_sink=my_sink) as server:
        server.runtime.glasses_connected("ada@example.com").wait(5)

An asyncio host uses `AsyncRuntime` instead. README.md, "Embedding", walks through both.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.acknowledgement import Acknowledgement, RuntimeStopped
    from actors.bridge import AudioChunk, AudioSink, AudioWatch, BridgeReport
    from actors.connector import Deadlines, RoomConnector
    from actors.health_feed import HealthSubscriber
    from actors.livekit_connector import LiveKitConnector, LiveKitSettings
    from actors.policy import POLICIES, SUPERVISED, Policy
    from actors.pool_executor import PoolExecutor
    from actors.runtime import Runtime, Status
    from events.catalog import HealthState
    from events.locations import open_log
    from events.log import CorruptLog, EventStore, LogError, WrongExpectedVersion
    from events.memory_store import MemoryStore
    from events.postgres_store import PostgresStore
    from events.projection import Health, SessionView, replay
    from events.sqlite_store import SQLiteStore
    from rejoin.aio import AsyncRuntime, Stream
    from rejoin.server import Server
    from rejoin.settings import VARIABLES, Settings, SettingsError

__all__ = [
    "POLICIES",
    "SUPERVISED",
    "VARIABLES",
    "Acknowledgement",
    "AsyncRuntime",
    "AudioChunk",
    "AudioSink",
    "AudioWatch",
    "BridgeReport",
    "CorruptLog",
    "Deadlines",
    "EventStore",
    "Health",
    "HealthState",
    "HealthSubscriber",
    "LiveKitConnector",
    "LiveKitSettings",
    "LogError",
    "MemoryStore",
    "Policy",
    "PoolExecutor",
    "PostgresStore",
    "RoomConnector",
    "Runtime",
    "RuntimeStopped",
    "SQLiteStore",
    "Server",
    "SessionView",
    "Settings",
    "SettingsError",
    "Status",
    "Stream",
    "WrongExpectedVersion",
    "open_log",
    "replay",
]

_HOMES = {
    "Acknowledgement": "actors.acknowledgement",
    "AsyncRuntime": "rejoin.aio",
    "AudioChunk": "actors.bridge",
    "AudioSink": "actors.bridge",
    "AudioWatch": "actors.bridge",
    "BridgeReport": "actors.bridge",
    "CorruptLog": "events.log",
    "Deadlines": "actors.connector",
    "EventStore": "events.log",
    "Health": "events.projection",
    "HealthState": "events.catalog",
    "HealthSubscriber": "actors.health_feed",
    "LiveKitConnector": "actors.livekit_connector",
    "LiveKitSettings": "actors.livekit_connector",
    "LogError": "events.log",
    "MemoryStore": "events.memory_store",
    "POLICIES": "actors.policy",
    "Policy": "actors.policy",
    "PoolExecutor": "actors.pool_executor",
    "PostgresStore": "events.postgres_store",
    "RoomConnector": "actors.connector",
    "Runtime": "actors.runtime",
    "RuntimeStopped": "actors.acknowledgement",
    "SQLiteStore": "events.sqlite_store",
    "SUPERVISED": "actors.policy",
    "Server": "rejoin.server",
    "SessionView": "events.projection",
    "Settings": "rejoin.settings",
    "SettingsError": "rejoin.settings",
    "Status": "actors.runtime",
    "Stream": "rejoin.aio",
    "VARIABLES": "rejoin.settings",
    "WrongExpectedVersion": "events.log",
    "open_log": "events.locations",
    "replay": "events.projection",
}
"""Where each name lives. A name is imported when first used, so that `rejoin`'s command line
does not load the LiveKit SDK for the commands that never use it."""


def __getattr__(name: str) -> Any:
    try:
        home = _HOMES[name]
    except KeyError:
        msg = f"module 'rejoin' has no attribute {name!r}"
        raise AttributeError(msg) from None
    return getattr(importlib.import_module(home), name)
