"""The OpenAPI document of `rejoin serve`, built from the types the API encodes.

The response schemas come from the msgspec structs themselves, so the document cannot drift
from what the server sends. `openapi.json` beside this module is this document, checked in for
clients to read; a test keeps the two equal (`python -m rejoin.service.openapi` rewrites it).
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from actors.runtime import Status
from events.projection import Health
from rejoin.service.routes import MAX_EPOCH, MAX_USER, USER_PATTERN, ConnectBody

__all__ = ["document"]


class Position(msgspec.Struct):
    user: str
    position: int
    """The input's position in the log, where it is durable; 0 for glasses that leave a server
    where they had no session (there is nothing to record)."""


class Refusal(msgspec.Struct):
    error: str
    """One line saying what is wrong."""


class Probe(msgspec.Struct):
    status: str


class HealthMessage(msgspec.Struct):
    health: Health


def _json(reference: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": reference}}},
    }


def _refusals(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "the user id or the body is malformed",
        404: "no session for this user on this server",
        413: "the body is too large",
        426: "a request for the WebSocket that does not ask for the upgrade",
        503: (
            "draining (new sessions go elsewhere), stopping, "
            "or the log did not take the input in time"
        ),
    }
    return {
        str(status): _json("#/components/schemas/Refusal", reasons[status]) for status in statuses
    }


def document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document."""
    (schemas_of, components) = msgspec.json.schema_components(
        [Status, Position, Refusal, Probe, ConnectBody, HealthMessage],
        ref_template="#/components/schemas/{name}",
    )
    del schemas_of
    user = {
        "name": "user",
        "in": "path",
        "required": True,
        "description": "The user's id, usually an e-mail address.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_USER,
            "pattern": USER_PATTERN,
        },
    }
    components["ConnectBody"]["properties"]["epoch"] = {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_EPOCH}, {"type": "null"}],
        "default": None,
    }
    position = _json("#/components/schemas/Position", "the input is durable")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rejoin serve",
            "version": "1",
            "description": (
                "One server's rejoin runtime: report the user's glasses connecting and leaving, "
                "read their status, and stream their phone's audio."
            ),
        },
        "paths": {
            "/v1/users/{user}/connect": {
                "post": {
                    "summary": "The user's glasses connected to this server",
                    "parameters": [user],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ConnectBody"}
                            }
                        },
                    },
                    "responses": {"200": position, **_refusals(400, 413, 503)},
                }
            },
            "/v1/users/{user}/disconnect": {
                "post": {
                    "summary": "The user's glasses left this server",
                    "parameters": [user],
                    "responses": {"200": position, **_refusals(400, 413, 503)},
                }
            },
            "/v1/users/{user}": {
                "get": {
                    "summary": "The user's session, health and bridge on this server",
                    "parameters": [user],
                    "responses": {
                        "200": _json("#/components/schemas/Status", "the user's status"),
                        **_refusals(400, 404),
                    },
                }
            },
            "/v1/users/{user}/audio": {
                "get": {
                    "summary": (
                        "A WebSocket: the phone's audio as binary messages (PCM16LE, 16 kHz, "
                        "mono, one chunk each) and each health change as a text message "
                        "(HealthMessage)"
                    ),
                    "parameters": [user],
                    "responses": {
                        "101": {"description": "switching to the WebSocket"},
                        **_refusals(400, 426),
                    },
                }
            },
            "/livez": {
                "get": {
                    "summary": "The process is alive",
                    "responses": {"200": _json("#/components/schemas/Probe", "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The server takes new sessions",
                    "responses": {
                        "200": _json("#/components/schemas/Probe", "ready"),
                        "503": _json("#/components/schemas/Probe", "draining"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus figures",
                    "responses": {
                        "200": {
                            "description": "the text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": components},
    }


def encoded() -> bytes:
    """The document as `openapi.json` holds it."""
    return msgspec.json.format(msgspec.json.encode(document()), indent=2) + b"\n"


def checked_in() -> bytes:
    return resources.files("rejoin.service").joinpath("openapi.json").read_bytes()


if __name__ == "__main__":
    Path(__file__).with_name("openapi.json").write_bytes(encoded())
    sys.exit(0)
