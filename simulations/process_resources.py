"""What this process holds now, as the leak checks count it: threads, file descriptors, UDP
sockets (the ICE sockets a WebRTC stack binds) and resident memory, from /proc (Linux)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec


class Resources(msgspec.Struct, frozen=True, kw_only=True):
    threads: int
    """Threads Python knows of; the SDK's native threads count once they call into Python."""
    os_threads: int
    our_threads: tuple[str, ...]
    """The threads Python started, by name: the SDK's native threads enter Python lazily as
    "Dummy-N", and a pool of them that fills once is not a leak."""
    fds: int
    udp_sockets: int
    rss_kb: int


def udp_sockets() -> int:
    """UDP sockets this process holds: its socket descriptors whose inodes the namespace's UDP
    tables list."""
    inodes: set[str] = set()
    for table in ("udp", "udp6"):
        path = Path("/proc/self/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9:
                inodes.add(fields[9])
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since it was listed
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def rss_kb() -> int:
    """The resident set now (not its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def snapshot() -> Resources:
    names = sorted(t.name for t in threading.enumerate())
    return Resources(
        threads=len(names),
        os_threads=len(os.listdir("/proc/self/task")),
        our_threads=tuple(n for n in names if not n.startswith("Dummy-")),
        fds=len(os.listdir("/proc/self/fd")),
        udp_sockets=udp_sockets(),
        rss_kb=rss_kb(),
    )
