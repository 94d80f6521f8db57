"""Scenario files: the built-in five load, and every kind of mistake is one line naming the file,
the line, and the fault."""

from pathlib import Path

import pytest

from simulations.scenario import BUILT_IN, ScenarioError, load


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_built_in_scenarios_load_with_expectations(name: str) -> None:
    scenario = load(name)
    assert scenario.name == name
    assert scenario.expect


def test_defaults_fill_what_a_file_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('servers = ["prod"]\n[[step]]\nat = 4\nuser = "a"\nconnect = "prod"\n')
    scenario = load(str(path))
    assert (scenario.name, scenario.grace_s, scenario.seed, scenario.end_s) == (
        "mine",
        60.0,
        0,
        14.0,
    )


BAD = {
    "malformed": ('servers = ["prod"\n', r"bad\.toml: not valid TOML"),
    "unknown key": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nconect = "prod"\n',
        r"bad\.toml:5: unknown key `conect`",
    ),
    "unknown top-level key": ('servers = ["prod"]\ngrace = 3\n', r"bad\.toml:2: unknown key"),
    "unknown server": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nconnect = "qa"\n',
        r"bad\.toml:5: unknown server 'qa'",
    ),
    "negative time": (
        'servers = ["prod"]\n[[step]]\nat = -1\nuser = "a"\nconnect = "prod"\n',
        r"bad\.toml:3: time -1 is negative",
    ),
    "out of order": (
        'servers = ["prod"]\n[[step]]\nat = 3\nuser = "a"\nconnect = "prod"\n'
        '[[step]]\nat = 1\nuser = "a"\ndisconnect = true\n',
        r"bad\.toml:7: time 1 comes before the step above it",
    ),
    "two actions": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nconnect = "prod"\ndisconnect = true\n',
        r"bad\.toml:2: a step takes exactly one action",
    ),
    "no user": ('servers = ["prod"]\n[[step]]\nat = 1\nconnect = "prod"\n', "names its user"),
    "wrong type": ('servers = "prod"\n', r"bad\.toml:1: Expected `array`"),
    "expectation on an unknown server": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a"\naudio_on = "dev"\n',
        "unknown server 'dev'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_one_line_naming_the_file_and_the_fault(case: str, tmp_path: Path) -> None:
    text, pattern = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=pattern) as raised:
        load(str(path))
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(str(path))


def test_invalid_utf8_is_named_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'servers = ["pr\xffod"]\n')
    with pytest.raises(
        ScenarioError, match=r"bad\.toml: not valid UTF-8 \(byte 0xff at offset 14\)"
    ):
        load(str(path))


def test_an_unknown_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ScenarioError, match=r"no-such: no such scenario file.*rapid-switch"):
        load("no-such")
