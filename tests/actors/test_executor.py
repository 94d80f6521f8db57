"""What both executors share: event ids and actor URNs in the text of `uuid.uuid4`."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from actors.executor import uuid4_text


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_an_id_reads_as_the_version_4_uuid_of_its_bits(bits: int) -> None:
    assert uuid4_text(bits) == str(uuid.UUID(int=bits, version=4))
