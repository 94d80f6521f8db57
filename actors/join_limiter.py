"""A server's join limiter: how fast its bridges may start joining their rooms.

A LiveKit server refuses joins beyond its limits (503, "node has exceeded its configured limit"),
and a LiveKit Cloud project has rate limits of its own. When a server dies and its users all
reconnect elsewhere at once, each receiving server would otherwise start thousands of joins in
one instant: most are refused, each refusal backs off and tries again, and the restart budgets
of thousands of sessions burn down together (the recovery storm of failure mode 10). The
limiter spaces a server's joins instead: at most `rate_per_s` start within any second, one every
`1000 // rate_per_s` ms, in the order they were asked for.

It runs on the executor's monotonic clock and is shared by the sessions of one runtime (owned
by its supervisor), so it holds a lock: on the pool executor sessions ask from several
worker threads.
"""

from __future__ import annotations

import collections
import threading


class JoinLimiter:
    def __init__(self, rate_per_s: int) -> None:
        if rate_per_s < 1:
            msg = f"a join rate must be at least 1 a second; found {rate_per_s}"
            raise ValueError(msg)
        self.rate_per_s = rate_per_s
        self._spacing_ms = 1_000 // rate_per_s
        self._booked: collections.deque[int] = collections.deque(maxlen=rate_per_s)
        """The latest `rate_per_s` turns given, ascending."""
        self._lock = threading.Lock()

    def turn(self, now_ms: int) -> int:
        """Book the earliest turn at or after `now_ms` that keeps the rate, after every turn
        booked before it, and return it. A turn is used or wasted, never given back: a session
        whose glasses left before its turn wastes it, and the limiter errs on the slow side."""
        with self._lock:
            turn = now_ms
            if self._booked:
                turn = max(turn, self._booked[-1] + self._spacing_ms)
            if len(self._booked) == self.rate_per_s:
                # The one booked `rate_per_s` turns ago must be more than a second back.
                turn = max(turn, self._booked[0] + 1_000)
            self._booked.append(turn)
            return turn
