"""A set of strings that answers "certainly not in it" or "maybe in it", in ten bits an item
of its capacity.

The supervisor keeps the users who ever had a session on its server in one, so that a user new
to the server opens a session without asking the log for a latest incarnation it cannot have:
at thousands of connects a second that read, in the one actor every connect passes through, is
the largest cost after the journal's. A "maybe" costs the read as before, so a false positive
(about 1% of strangers) is slower, never wrong.

Once full it grows by a layer four times the size of the last, so that its memory follows the
items it holds; an item is looked up in every layer. The hash is BLAKE2b, not Python's `hash`:
a run of the deterministic simulation must ask the log the same questions whatever the
process's hash seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_PROBES = 7
_BITS_PER_ITEM = 10
"""Ten bits an item and seven probes: about 1% false positives in a full layer."""
_GROWTH = 4
_MASK_64 = (1 << 64) - 1


class _Layer:
    __slots__ = ("bits", "capacity", "count", "size")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.size = capacity * _BITS_PER_ITEM
        self.bits = bytearray((self.size + 7) // 8)

    def probes(self, first: int, step: int) -> list[int]:
        return [(first + probe * step) % self.size for probe in range(_PROBES)]


class BloomFilter:
    def __init__(self, items: Iterable[str] = (), *, capacity: int = 4_096) -> None:
        if capacity < 1:
            msg = f"a Bloom filter holds at least 1 item a layer; asked for {capacity}"
            raise ValueError(msg)
        self._layers = [_Layer(capacity)]
        for item in items:
            self.add(item)

    def add(self, item: str) -> None:
        """Hold `item` from now on; an item added twice fills its layer twice."""
        layer = self._layers[-1]
        if layer.count == layer.capacity:
            layer = _Layer(layer.capacity * _GROWTH)
            self._layers.append(layer)
        first, step = _hashes(item)
        for bit in layer.probes(first, step):
            layer.bits[bit >> 3] |= 1 << (bit & 7)
        layer.count += 1

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        first, step = _hashes(item)
        return any(
            all(layer.bits[bit >> 3] >> (bit & 7) & 1 for bit in layer.probes(first, step))
            for layer in self._layers
        )

    @property
    def bytes_used(self) -> int:
        return sum(len(layer.bits) for layer in self._layers)


def _hashes(item: str) -> tuple[int, int]:
    """Two independent 64-bit hashes; probe `i` is `first + i * step` (Kirsch-Mitzenmacher),
    the step odd so that it is never zero."""
    digest = hashlib.blake2b(item.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    value = int.from_bytes(digest, "little")
    return value & _MASK_64, (value >> 64) | 1
