"""What both executors share: event ids and actor URNs in the text of `uuid.uuid4`, and the
pool's event ids in the text of a version 7 UUID, in time order."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from actors.executor import uuid4_text, uuid7_text

MS = st.integers(min_value=0, max_value=2**48 - 1)
BITS = st.integers(min_value=0, max_value=2**74 - 1)


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_an_id_reads_as_the_version_4_uuid_of_its_bits(bits: int) -> None:
    assert uuid4_text(bits) == str(uuid.UUID(int=bits, version=4))


@given(MS, BITS)
def test_a_time_ordered_id_reads_as_a_version_7_uuid_of_its_millisecond_and_bits(
    ms: int, bits: int
) -> None:
    made = uuid.UUID(uuid7_text(ms, bits))
    assert (made.version, made.variant) == (7, uuid.RFC_4122)
    assert made.int >> 80 == ms
    assert (made.int >> 64 & 0xFFF, made.int & (2**62 - 1)) == (bits >> 62, bits & (2**62 - 1))


@given(st.integers(min_value=0, max_value=2**48 - 2), st.integers(min_value=1), BITS, BITS)
def test_an_id_of_a_later_millisecond_sorts_after(
    ms: int, step: int, bits: int, other: int
) -> None:
    later = min(ms + step, 2**48 - 1)
    assert uuid7_text(ms, bits) < uuid7_text(later, other)
