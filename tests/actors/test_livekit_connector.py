"""The LiveKit connector's pure parts: the token a bridge joins with, reason names, redaction,
and how long closing waits for a join in flight. Joining real rooms is covered by
tests/integration/test_real_sdk.py."""

import json
import threading

import msgspec
from livekit import api

from actors.connector import JoinRequest
from actors.livekit_connector import (
    LiveKitConnector,
    LiveKitSettings,
    bridge_token,
    is_permanent,
    reason_name,
)
from actors.redaction import redact

SETTINGS = LiveKitSettings(
    url="ws://127.0.0.1:7880",
    api_key="devkey",
    api_secret="s3cret-value-long-enough-for-hs256-keys",
)
REQUEST = JoinRequest(
    room="ada@x.io",
    identity="cloud-agent:ada@x.io",
    server="prod",
    epoch=42,
    generation=3,
    phone_identity="ada@x.io",
)


def test_a_bridge_token_grants_only_joining_and_subscribing_and_carries_server_and_epoch() -> None:
    claims = api.TokenVerifier("devkey", "s3cret-value-long-enough-for-hs256-keys").verify(
        bridge_token(SETTINGS, REQUEST)
    )
    assert claims.identity == "cloud-agent:ada@x.io"
    video = claims.video
    assert video is not None
    assert (video.room_join, video.room, video.can_subscribe) == (True, "ada@x.io", True)
    assert (video.can_publish, video.can_publish_data) == (False, False)
    assert not video.room_admin
    assert json.loads(claims.metadata) == {"server": "prod", "epoch": 42}


def test_sdk_reasons_map_to_the_policy_names() -> None:
    assert reason_name(2) == "DUPLICATE_IDENTITY"
    assert reason_name(4) == "PARTICIPANT_REMOVED"
    assert reason_name(0) == "UNKNOWN_REASON"
    assert reason_name(999) == "UNKNOWN_REASON"


def test_secrets_never_reach_a_message_or_a_repr() -> None:
    token = bridge_token(SETTINGS, REQUEST)
    text = f"connect failed for {token} with s3cret-value-long-enough-for-hs256-keys"
    assert redact(text) == "connect failed for [redacted] with [redacted]", (
        "settings register their secret, and a token is hidden by its shape"
    )
    assert "s3cret-value-long-enough-for-hs256-keys" not in repr(SETTINGS)


def test_errors_trying_again_cannot_fix_are_permanent_and_the_rest_transient() -> None:
    for permanent in [
        "engine: signal failure: client error: 401 Unauthorized - invalid or expired token",
        "engine: signal failure: failed to parse the url: relative URL without a base",
        "403 Forbidden",
        "unauthenticated: invalid API key",
    ]:
        assert is_permanent(permanent), permanent
    for transient in [
        "engine: signal failure: transport connection error: IO error: Connection refused",
        "503 Service Unavailable",
        "no answer within 5 s",
        "room 4010 is full",
    ]:
        assert not is_permanent(transient), transient


class JoinInFlight:
    """A join whose `Room.connect` the SDK ends `ends_after_s` after it is left: one overtaken
    in flight ends only when the SDK's own 15 s wait does."""

    def __init__(self, ends_after_s: float) -> None:
        self.ends_after_s = ends_after_s
        self.released = threading.Event()

    def leave(self) -> None:
        ender = threading.Timer(self.ends_after_s, self.released.set)
        ender.daemon = True
        ender.start()

    def wait_released(self, timeout_s: float) -> bool:
        return self.released.wait(timeout_s)


def test_closing_waits_for_a_join_in_flight_as_long_as_the_sdk_may_take_to_end_it() -> None:
    settings = msgspec.structs.replace(
        SETTINGS, connect_timeout_s=0.05, leave_timeout_s=0.05, sdk_give_up_s=5.0
    )
    connector = LiveKitConnector(settings)
    join = JoinInFlight(ends_after_s=0.3)
    connector._handles.add(join)  # type: ignore[arg-type]
    connector.close()
    assert join.released.is_set(), "closing gave up on a join the SDK was still ending"
