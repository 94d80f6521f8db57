"""Redaction in one place: registered secrets, tokens by their shape, and log records."""

import logging

import pytest

from actors.redaction import MASK, RedactingFilter, redact, register_secret

TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJjbG91ZC1hZ2VudDphZGEifQ.kX1mNgH8c2mfKXZ3l0xQ9tO3dyCq8L5yq7f1h0V2Q4s"
)


def test_a_token_a_server_echoed_in_its_error_body_is_hidden() -> None:
    echoed = f'401 Unauthorized - {{"error": "bad token", "token": "{TOKEN}"}}'
    assert TOKEN not in redact(echoed)
    assert redact(echoed) == f'401 Unauthorized - {{"error": "bad token", "token": "{MASK}"}}'


def test_a_token_in_a_url_query_is_hidden() -> None:
    url = f"ws://10.77.0.1:7880/rtc?access_token={TOKEN}&auto_subscribe=1"
    assert redact(url) == f"ws://10.77.0.1:7880/rtc?access_token={MASK}&auto_subscribe=1"


def test_the_join_request_the_sdk_packs_its_token_in_is_hidden() -> None:
    url = "ws://h/rtc/v1/validate?join_request=CAESnwwfiwgAAAAAAAD_7Vpbb9s2FN4K&x=1"
    assert redact(url) == f"ws://h/rtc/v1/validate?join_request={MASK}&x=1"


def test_the_password_of_a_logs_url_is_hidden_wherever_the_url_puts_it() -> None:
    assert redact("postgresql://rejoin:s3cr%40t@db:5432/log failed") == (
        f"postgresql://rejoin:{MASK}@db:5432/log failed"
    )
    assert redact("postgres://db/log?user=rejoin&password=s3cret&sslmode=require") == (
        f"postgres://db/log?user=rejoin&password={MASK}&sslmode=require"
    )
    assert (
        redact("ws://127.0.0.1:7880/rtc and rejoin@db") == "ws://127.0.0.1:7880/rtc and rejoin@db"
    )


def test_a_bearer_credential_of_any_shape_is_hidden() -> None:
    assert redact("Authorization: Bearer abc.def") == f"Authorization: Bearer {MASK}"


def test_a_registered_secret_is_hidden_everywhere_and_a_longer_one_whole() -> None:
    register_secret("hunter2-but-longer")
    register_secret("hunter2")
    assert redact("a hunter2-but-longer and a hunter2") == f"a {MASK} and a {MASK}"


def test_text_without_secrets_is_left_as_it_is() -> None:
    assert redact("joined room ada@x.io as cloud-agent:ada@x.io") == (
        "joined room ada@x.io as cloud-agent:ada@x.io"
    )


def test_a_log_record_is_redacted_with_its_arguments_and_its_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_secret("the-api-secret-value")
    logger = logging.getLogger("rejoin.test")
    caplog.handler.addFilter(RedactingFilter())
    try:
        raise ValueError(f"connect with {TOKEN}")
    except ValueError:
        logger.exception("join failed for %s with %s", "ada", "the-api-secret-value")
    text = caplog.text
    assert "the-api-secret-value" not in text
    assert TOKEN not in text
    assert f"join failed for ada with {MASK}" in text
    assert f"ValueError: connect with {MASK}" in text
