"""Policies by name, and the identities they join with."""

import pytest

from actors.policy import POLICIES, UnknownPolicy, policy_named


def test_the_six_policies_of_the_design_are_selectable_by_name() -> None:
    assert list(POLICIES) == [
        "legacy",
        "status-check",
        "health-check",
        "dispose-on-grace",
        "per-server-identity",
        "supervised",
    ]
    assert policy_named("supervised").supervise_losses


def test_every_server_shares_one_identity_except_under_per_server_identity() -> None:
    assert policy_named("supervised").identity("a@x.io", "prod") == "cloud-agent:a@x.io"
    assert (
        policy_named("per-server-identity").identity("a@x.io", "prod") == "cloud-agent-prod:a@x.io"
    )


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPolicy, match=r"unknown policy 'nope' .*supervised"):
        policy_named("nope")
