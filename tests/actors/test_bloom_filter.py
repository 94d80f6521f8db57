"""The Bloom filter of a server's users: never a false "not in it", across its layers, and
about 1% false positives when full."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.bloom_filter import BloomFilter


@given(st.lists(st.text(), max_size=300), st.integers(min_value=1, max_value=20))
def test_every_item_added_is_found_whatever_the_layers(items: list[str], capacity: int) -> None:
    bloom = BloomFilter(items[: len(items) // 2], capacity=capacity)
    for item in items[len(items) // 2 :]:
        bloom.add(item)
    assert all(item in bloom for item in items)


def test_a_full_layer_answers_maybe_for_about_one_stranger_in_a_hundred() -> None:
    bloom = BloomFilter((f"user{n}@mentra.glass" for n in range(10_000)), capacity=10_000)
    strangers = sum(f"stranger{n}@mentra.glass" in bloom for n in range(100_000))
    assert 0 < strangers < 2_000
    assert bloom.bytes_used == 12_500, "ten bits an item, one layer"


def test_it_grows_by_layers_four_times_the_last() -> None:
    bloom = BloomFilter(capacity=100)
    for n in range(101):
        bloom.add(f"u{n}")
    assert bloom.bytes_used == 125 + 500


def test_an_item_that_is_no_string_is_not_in_it() -> None:
    assert 1 not in BloomFilter(["1"])


def test_it_holds_at_least_one_item_a_layer() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        BloomFilter(capacity=0)
