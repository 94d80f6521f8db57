"""schemathesis against the served OpenAPI document: whatever a client sends, the server
answers without a 5xx, and every answer matches the document."""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.generation.case import Case

from rejoin.service import Service
from rejoin.service.openapi import document
from simulations.scale import InstantRooms
from tests.rejoin.service.test_api import settings

# The audio WebSocket's handshake is beyond what schemathesis sends; test_api covers it.
schema = schemathesis.openapi.from_dict(document()).exclude(path="/v1/users/{user}/audio")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service on its own loop, in a thread, for the module's requests."""
    folder: Path = tmp_path_factory.mktemp("schema")
    started = threading.Event()
    stop: list[asyncio.Event] = []
    ports: list[int] = []

    async def serve() -> None:
        service = Service(settings(folder), connector=InstantRooms(phones=True))
        await service.start()
        ports.append(service.port)
        stop.append(asyncio.Event())
        started.set()
        await stop[0].wait()
        await service.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    assert started.wait(30), "the service did not start"
    yield f"http://127.0.0.1:{ports[0]}"
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(30)
    loop.close()


@schema.parametrize()
def test_the_api_answers_every_request_as_its_document_says(case: Case[Any], base_url: str) -> None:
    case.call_and_validate(base_url=base_url)
