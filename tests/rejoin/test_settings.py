"""Settings come from the environment with the ecosystem's names; every fault is one line
naming its variable, and no secret is ever part of a message."""

import pytest

from actors.redaction import redact
from rejoin import VARIABLES, Settings, SettingsError

SECRET = "s3cr3t-value-never-shown"
LIVEKIT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": SECRET,
}


def test_the_livekit_variables_and_defaults_make_settings() -> None:
    settings = Settings.from_environment({**LIVEKIT, "REJOIN_SERVER": "prod"})
    assert settings.server == "prod"
    assert settings.livekit.url == "ws://127.0.0.1:7880"
    assert settings.livekit.api_secret == SECRET
    assert (settings.policy.name, settings.grace_ms, settings.join_rate_per_s) == (
        "supervised",
        60_000,
        None,
    )
    assert (settings.host, settings.port, settings.log_format) == ("127.0.0.1", 8787, "json")
    assert settings.shared_log is False
    assert settings.pseudonym("ada@example.com") == "ada@example.com"


def test_rejoin_variables_override_the_defaults() -> None:
    environment = {
        **LIVEKIT,
        "REJOIN_SERVER": "debug",
        "REJOIN_LOG": "/var/lib/rejoin/debug.db",
        "REJOIN_SHARED_LOG": "true",
        "REJOIN_POLICY": "legacy",
        "REJOIN_GRACE_S": "2.5",
        "REJOIN_JOIN_RATE": "300",
        "REJOIN_STALL_AFTER_MS": "2000",
        "REJOIN_PORT": "9000",
        "REJOIN_DRAIN_TIMEOUT_S": "1",
        "REJOIN_LOG_FORMAT": "text",
        "REJOIN_LOG_LEVEL": "DEBUG",
    }
    settings = Settings.from_environment(environment)
    assert (settings.log, settings.shared_log) == ("/var/lib/rejoin/debug.db", True)
    assert settings.policy.name == "legacy"
    assert settings.grace_ms == 2_500
    assert settings.join_rate_per_s == 300
    assert settings.audio_watch.stall_after_ms == 2_000
    assert (settings.port, settings.drain_timeout_s) == (9000, 1.0)
    assert (settings.log_format, settings.log_level) == ("text", "debug")


def test_every_fault_is_reported_on_its_own_line_naming_its_variable() -> None:
    environment = {
        "LIVEKIT_URL": "ftp://example.com",
        "LIVEKIT_API_SECRET": SECRET,
        "REJOIN_GRACE_S": "soon",
        "REJOIN_PORT": "70000",
        "REJOIN_POLICY": "hopeful",
        "REJOIN_PSEUDONYMISE": "perhaps",
        "REJOIN_SERVER": "prod server",
        "REJOIN_SHARED_LOG": "sometimes",
    }
    with pytest.raises(SettingsError) as raised:
        Settings.from_environment(environment)
    named = [fault.split(":")[0] for fault in raised.value.faults]
    assert named == [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "REJOIN_SERVER",
        "REJOIN_SHARED_LOG",
        "REJOIN_POLICY",
        "REJOIN_GRACE_S",
        "REJOIN_PORT",
        "REJOIN_PSEUDONYMISE",
    ], "in the order of the table of variables"
    assert str(raised.value).count("\n") == len(named) - 1
    assert all(name in VARIABLES for name in named)


def test_no_secret_reaches_an_error_or_a_repr() -> None:
    url_password = "pa55word"
    environment = {
        **LIVEKIT,
        "LIVEKIT_URL": f"ftp://user:{url_password}@example.com",
        "REJOIN_PSEUDONYMISE": "true",
        "REJOIN_PSEUDONYM_KEY": "fleet-pseudonym-key",
    }
    with pytest.raises(SettingsError) as raised:
        Settings.from_environment(environment)
    assert url_password not in str(raised.value)
    settings = Settings.from_environment({**environment, "LIVEKIT_URL": LIVEKIT["LIVEKIT_URL"]})
    shown = repr(settings)
    for secret in (SECRET, "fleet-pseudonym-key"):
        assert secret not in shown
        assert secret not in redact(f"an error that quotes {secret}")


def test_a_postgresql_logs_password_reaches_no_repr_and_no_message() -> None:
    log = "postgresql://rejoin:l0g-pa55@db.internal/rejoin"
    settings = Settings.from_environment({**LIVEKIT, "REJOIN_LOG": log})
    assert settings.log == log
    assert "l0g-pa55" not in repr(settings)
    assert "log='postgresql://rejoin@db.internal/rejoin'" in repr(settings)
    assert redact("libpq quoted l0g-pa55 alone") == "libpq quoted [redacted] alone"


def test_pseudonyms_are_stable_under_one_key_and_hide_the_address() -> None:
    environment = {**LIVEKIT, "REJOIN_PSEUDONYMISE": "yes", "REJOIN_PSEUDONYM_KEY": "fleet-key-one"}
    first = Settings.from_environment(environment)
    again = Settings.from_environment(environment)
    other = Settings.from_environment({**environment, "REJOIN_PSEUDONYM_KEY": "fleet-key-two"})
    user = "ada@example.com"
    assert first.pseudonym(user) == again.pseudonym(user) != other.pseudonym(user)
    assert "ada" not in first.pseudonym(user)
