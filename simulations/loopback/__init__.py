"""A small LiveKit-compatible server on this machine, so the real SDK can be tested end to end.

It speaks what `livekit` 1.2.1 needs (research/livekit-wire-protocol.md): the v0 `/rtc` signal
WebSocket with `subscriber_primary=false` (`/rtc/v1` answers 404 so the client falls back), a
publisher peer connection answered by aiortc, data forwarded between participants by channel
label, the kicks of the real server (duplicate identity, removal, room deletion, shutdown) as
Leave requests, and the RoomService over Twirp. A participant whose signal drops without a
Leave stays for the departure timeout and may resume (`reconnect=1`) with its SID; past it, a
resume is told `Leave{STATE_MISMATCH, RECONNECT}` and the client rejoins from scratch. Tokens
are refreshed as a real server does, and the SDK's drills (`simulate_scenario`) answered.

Its parts: `wire` (ids and signal frames), `peer` (aiortc), `rooms` (signal sessions),
`room_service` (Twirp), `server` (HTTP and test controls), `thread` (a thread of its own).
ICE ignores loopback interfaces: run it and its clients inside `scripts/netns-run`.
"""

from simulations.loopback.server import LoopbackServer
from simulations.loopback.thread import LoopbackThread, serve

__all__ = ["LoopbackServer", "LoopbackThread", "serve"]
