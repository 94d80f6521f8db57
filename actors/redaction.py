"""Secrets never reach a log or an error: every text that leaves the process passes `redact`.

Two kinds of secret are hidden: the values registered here (API secrets, as settings are made)
and anything shaped like a credential whoever produced the text: a JWT (LiveKit's access
tokens are JWTs, even one a server echoes back in an error body), a bearer header, the query
values that carry a token (`access_token`, and the `join_request` the SDK's v1 signal path
packs one into), and a password in a URL or its query (a PostgreSQL log's URL). Error messages
are redacted where they are printed, log records by `RedactingFilter` on the handler.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["RedactingFilter", "redact", "register_secret"]

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")
_QUERY = re.compile(r"(?i)\b(access_token|join_request|token|password)=[^&\s\"',;]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@")
"""The password of a URL's user (`postgresql://rejoin:PASSWORD@db/log`)."""
MASK = "[redacted]"

_lock = threading.Lock()
_secrets: list[str] = []
"""Registered secrets, longest first, so that a secret containing another is hidden whole."""


def register_secret(secret: str) -> None:
    """Hide `secret` in every text `redact` sees from now on."""
    if not secret:
        return
    with _lock:
        if secret not in _secrets:
            _secrets.append(secret)
            _secrets.sort(key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every registered secret, token and bearer credential replaced by a mask."""
    with _lock:
        known = list(_secrets)
    for secret in known:
        text = text.replace(secret, MASK)
    text = _JWT.sub(MASK, text)
    text = _QUERY.sub(rf"\g<1>={MASK}", text)
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)
    return _BEARER.sub(rf"\g<1>{MASK}", text)


class RedactingFilter(logging.Filter):
    """Redacts each record's whole message (its arguments filled in) before a handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
