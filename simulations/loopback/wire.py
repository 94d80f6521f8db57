"""What every part of the loopback server says on the wire: ids, clocks and signal frames."""

from __future__ import annotations

import logging
import secrets
import time
from typing import TypeVar

from aiohttp import web
from google.protobuf.message import Message
from livekit.protocol import rtc

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Message)

PING_INTERVAL_S = 5
PING_TIMEOUT_S = 15
SERVER_VERSION = "1.9.0"
"""Must be semver: the SDK's RPC code parses it and panics otherwise."""


def new_sid(prefix: str) -> str:
    """A fresh id with the prefix the SDK checks (`PA_`, `RM_`, `TR_`)."""
    return prefix + secrets.token_hex(6)


def now_ms() -> int:
    """Wall-clock milliseconds, as LiveKit stamps its messages."""
    return int(time.time() * 1000)


def copy(message: _M) -> _M:
    """A deep copy of a protobuf message."""
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


async def send(ws: web.WebSocketResponse, response: rtc.SignalResponse) -> None:
    """Send a signal response; a socket that is gone already needs nothing more."""
    if ws.closed:
        return
    try:
        await ws.send_bytes(response.SerializeToString())
    except (ConnectionError, RuntimeError):
        log.debug("could not send %s: the socket is closing", response.WhichOneof("message"))
