"""One aiortc peer connection of a participant, and the SDP and ICE details it needs."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp


class Peer:
    """One aiortc peer connection, serialising its negotiation with the client's candidates.

    aiortc drops a candidate that arrives before the remote description, and applying one is
    asynchronous, so candidates wait on the lock and those that come first are kept until then.
    """

    def __init__(self) -> None:
        # No ICE servers: aiortc would otherwise try Google's STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._lock = asyncio.Lock()
        self._early: list[RTCIceCandidate] = []

    async def answer(self, offer_sdp: str) -> str:
        """Apply the client's offer and return the answer, with every local candidate in it."""
        async with self._lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._add_early()
            return self.pc.localDescription.sdp

    async def offer(self) -> str:
        """Return a new offer, with every local candidate in it."""
        async with self._lock:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            return self.pc.localDescription.sdp

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the client's answer to an offer of ours."""
        async with self._lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            await self._add_early()

    async def add_candidate(self, candidate: RTCIceCandidate) -> None:
        """Add a trickled candidate now, or once the remote description is applied."""
        async with self._lock:
            if self.pc.remoteDescription is None:
                self._early.append(candidate)
            else:
                await self.pc.addIceCandidate(candidate)

    async def _add_early(self) -> None:
        early, self._early = self._early, []
        for candidate in early:
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        """Close the peer connection."""
        await self.pc.close()


def parse_candidate(candidate_init: str) -> RTCIceCandidate | None:
    """The aiortc candidate of the SDK's trickle JSON, or None for one aiortc cannot use."""
    try:
        init = json.loads(candidate_init)
        line = str(init.get("candidate", ""))
    except (ValueError, AttributeError):
        return None
    line = line.removeprefix("candidate:")
    # aioice only does UDP; libwebrtc also trickles TCP candidates.
    if not line or " udp " not in f" {line.lower()} ":
        return None
    try:
        candidate = candidate_from_sdp(line)
    except (AssertionError, ValueError, IndexError):
        return None
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def cids_by_mid(offer_sdp: str) -> dict[str, str]:
    """The SDK's track cid of each mid of an offer (its `a=msid:- <cid>`)."""
    cids = {}
    for media in SessionDescription.parse(offer_sdp).media:
        parts = (media.msid or "").split()
        if media.rtp.muxId and len(parts) == 2:
            cids[media.rtp.muxId] = parts[1]
    return cids


async def drain(track: MediaStreamTrack) -> None:
    """Read a track until it ends."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
