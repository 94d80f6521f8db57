"""The simulated LiveKit's join rate: what a LiveKit node past its limits answers a join."""

from actors.connector import JoinRequest, RoomEvent, RoomJoined, RoomJoinFailed
from actors.deterministic_executor import DeterministicExecutor
from actors.livekit_connector import is_permanent
from simulations.sim_livekit import LIMIT_EXCEEDED, SfuConfig, SimLiveKit


def request(number: int) -> JoinRequest:
    user = f"u{number}"
    identity = f"cloud-agent:{user}"
    return JoinRequest(
        room=user, identity=identity, server="prod", epoch=1, generation=1, phone_identity=user
    )


def test_the_simulated_livekit_refuses_joins_beyond_its_rate_with_a_transient_503() -> None:
    executor = DeterministicExecutor(0)
    sfu = SimLiveKit(executor, executor.random, SfuConfig(join_rate_per_s=2))
    answers: list[RoomEvent] = []
    for number in range(3):
        sfu.join(request(number), answers.append)
    executor.advance(999)
    sfu.join(request(3), answers.append)
    executor.advance(1)
    sfu.join(request(4), answers.append)
    executor.advance(1_000)
    refusals = [answer for answer in answers if isinstance(answer, RoomJoinFailed)]
    assert refusals == [RoomJoinFailed(error=LIMIT_EXCEEDED)] * 2, "the third and the fourth"
    assert sum(isinstance(answer, RoomJoined) for answer in answers) == 3
    assert sfu.admitted_join_ms == [0, 0, 1_000]
    assert sfu.refused_joins == 2
    assert not is_permanent(LIMIT_EXCEEDED), "the real connector reads it as worth a retry"
