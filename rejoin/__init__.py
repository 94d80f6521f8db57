"""rejoin: keeps a server-side LiveKit bridge in its user's room across reconnects and server
switches, and records every decision it makes.

This package is the public API; every other module is private by convention, as in pykka.

    from rejoin import Server, Settings

    with Server(Settings.from_environment(), audio_sink=my_sink) as server:
        server.runtime.glasses_connected("ada@example.com").wait(5)

An asyncio host uses `AsyncRuntime` instead. README.md, "Embedding", walks through both.
"""

from actors.acknowledgement import Acknowledgement
from actors.bridge import AudioChunk, AudioSink, AudioWatch, BridgeReport
from actors.connector import Deadlines, RoomConnector
from actors.health_feed import HealthSubscriber
from actors.livekit_connector import LiveKitConnector, LiveKitSettings
from actors.policy import POLICIES, SUPERVISED, Policy
from actors.pool_executor import PoolExecutor
from actors.runtime import Runtime, Status
from events.catalog import HealthState
from events.log import CorruptLog, EventStore, LogError, WrongExpectedVersion
from events.memory_store import MemoryStore
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
    "RoomConnector",
    "Runtime",
    "SQLiteStore",
    "Server",
    "SessionView",
    "Settings",
    "SettingsError",
    "Status",
    "Stream",
    "WrongExpectedVersion",
    "replay",
]
