"""Stream names: one per (server, user, incarnation), whatever the names hold."""

from hypothesis import given
from hypothesis import strategies as st

from events.envelope import stream_name

names = st.text(alphabet=st.sampled_from("ab/%2F"), min_size=1, max_size=6)


def test_a_slash_in_a_name_cannot_make_two_sessions_share_a_stream() -> None:
    assert stream_name("a", "b/c", 1) != stream_name("a/b", "c", 1)
    assert stream_name("a", "b/c", 1) == "a/b%2Fc/1"
    assert stream_name("a/b", "c", 1) == "a%2Fb/c/1"


def test_an_escape_in_a_name_is_escaped_too() -> None:
    assert stream_name("a", "b%2Fc", 1) != stream_name("a", "b/c", 1)


def test_plain_names_read_as_they_did() -> None:
    assert stream_name("prod", "isaiah@mentra.glass", 3) == "prod/isaiah@mentra.glass/3"


@given(
    first=st.tuples(names, names, st.integers(1, 3)),
    second=st.tuples(names, names, st.integers(1, 3)),
)
def test_different_sessions_never_share_a_stream(
    first: tuple[str, str, int], second: tuple[str, str, int]
) -> None:
    if first != second:
        assert stream_name(*first) != stream_name(*second)
