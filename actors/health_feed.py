"""The health feed: how a host hears of each change in a user's health on this server.

A session publishes a change once the `HealthChanged` event that records it is durable, so what
the host was told is always in the log. Subscribers are called on the thread running the
session's turn (a worker of the pool, which serves other actors too), in the order of the
changes: they must return quickly (hand the change to the host's own loop), and an exception in
one is logged and never reaches the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from events.projection import Health

logger = logging.getLogger(__name__)

HealthSubscriber = Callable[[str, Health], object]
"""Called with the user and their new health."""


class HealthFeed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[HealthSubscriber] = []

    def subscribe(self, subscriber: HealthSubscriber) -> Callable[[], None]:
        """Call `subscriber` on every change from now on; returns the call that stops it."""
        with self._lock:
            self._subscribers = [*self._subscribers, subscriber]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not subscriber]

        return unsubscribe

    def publish(self, user: str, health: Health) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(user, health)
            except Exception:
                logger.exception("a health subscriber failed on %s's change", user)
