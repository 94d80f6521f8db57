"""`rejoin replay --html`: a picture of each user's timeline across servers, with every text
from the log escaped, written beside the log and never over it."""

import re
from pathlib import Path

import pytest

from events.catalog import AnyEvent, GlassesConnected, GraceStarted
from events.envelope import Pending
from events.sqlite_store import SQLiteStore
from rejoin.cli import main
from rejoin.timeline import html_page


def tooltips(page: str) -> list[str]:
    return re.findall(r"<title>(.*?)</title>", page)[1:]


def test_the_rapid_switch_picture_shows_both_kicks_and_prods_second_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, picture = tmp_path / "run.db", tmp_path / "run.html"
    assert main(["simulate", "rapid-switch", "--events", str(log)]) == 0
    assert main(["replay", str(log), "--html", str(picture)]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {picture}\n")
    page = picture.read_text(encoding="utf-8")
    tips = tooltips(page)
    assert sum("kicked by a newer bridge" in tip for tip in tips) == 2
    assert any("generation 2 in" in tip for tip in tips), "prod rejoined"
    assert page.count("<svg") == 1, "one user"


def test_text_from_the_log_is_escaped_whatever_it_holds() -> None:
    hostile = "<script>alert(1)</script>"
    events: list[AnyEvent] = [
        GlassesConnected(epoch=1),
        GraceStarted(cause="e0", why=f"</title>{hostile}", deadline_ms=9_000),
    ]
    envelopes = [
        Pending(event_id=f"e{n}", time_ms=1_000 * n, server="prod", user=hostile, event=event).at(
            position=n + 1, stream="prod/x/1", version=n + 1
        )
        for n, event in enumerate(events)
    ]
    page = html_page(envelopes, hostile)
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_a_picture_is_never_written_over_the_log_it_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "run.db"
    assert main(["simulate", "rapid-switch", "--events", str(log)]) == 0
    before = log.read_bytes()
    assert main(["replay", str(log), "--html", str(log)]) == 2
    assert "a replay never writes to its log" in capsys.readouterr().err
    assert log.read_bytes() == before
    SQLiteStore(log, read_only=True).close()


def test_an_empty_log_makes_a_page_that_says_so() -> None:
    assert "The log holds no events." in html_page([], "empty")
