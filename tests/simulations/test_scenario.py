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
    assert (
        scenario.name,
        scenario.grace_s,
        scenario.seed,
        scenario.end_s,
        scenario.shared_log,
    ) == ("mine", 60.0, 0, 14.0, False)


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
        r"bad\.toml:3: at must be from 0 to 3600 s; found -1",
    ),
    "not a number": ('servers = ["prod"]\ngrace_s = nan\n', r"bad\.toml:2: grace_s .* found nan"),
    "infinite time": (
        'servers = ["prod"]\n[[step]]\nat = inf\nuser = "a"\nconnect = "prod"\n',
        r"bad\.toml:3: at must be from 0 to 3600 s; found inf",
    ),
    "infinite outage": (
        'servers = ["prod"]\n[[step]]\nat = 1\nsfu_outage_s = -inf\n',
        r"bad\.toml:4: sfu_outage_s must be from 0.001 to 3600 s; found -inf",
    ),
    "not-a-number expectation": (
        'servers = ["prod"]\n[[expect]]\nat = nan\nuser = "a"\naudio_on = "prod"\n',
        r"bad\.toml:3: at .* found nan",
    ),
    "huge audio chunks": (
        'servers = ["prod"]\n[sfu]\naudio_chunk_ms = 1_000_000_000\n',
        r"bad\.toml:3: audio_chunk_ms must be from 10 to 1000 ms; found 1_000_000_000",
    ),
    "a token that never lives": (
        'servers = ["prod"]\n[sfu]\ntoken_ttl_s = 0\n',
        r"bad\.toml:3: token_ttl_s must be from 1 to 86400 s",
    ),
    "a latency beyond reason": (
        'servers = ["prod"]\n[sfu]\njoin_latency_ms = [5, 100000000]\n',
        r"bad\.toml:3: join_latency_ms must be from 0 to 60000 ms; found 100_000_000",
    ),
    "a negative seed": ('servers = ["prod"]\nseed = -1\n', r"bad\.toml:2: seed must be from 0 to"),
    "grace under a millisecond": (
        'servers = ["prod"]\ngrace_s = 0.0001\n',
        r"bad\.toml:2: grace_s must be from 0.001 to 3600 s; found 0.0001",
    ),
    "a run too long": (
        'servers = ["prod"]\nduration_s = 1e9\n',
        r"bad\.toml:2: duration_s must be",
    ),
    "too many audio chunks": (
        'servers = ["prod"]\nduration_s = 3600\n[sfu]\naudio_chunk_ms = 10\n'
        + "".join(f'[[step]]\nat = 0\nuser = "u{i}"\nconnect = "prod"\n' for i in range(3)),
        r"bad\.toml: the phones could send 1,080,000 audio chunks \(3 users for 3600 s",
    ),
    "nested too deeply": (
        'servers = ["prod"]\nx = ' + "[" * 5000 + "]" * 5000 + "\n",
        r"bad\.toml: not a scenario: its tables or arrays are nested too deeply",
    ),
    "an empty server name": ('servers = ["prod", ""]\n', r"bad\.toml:1: a name cannot be empty"),
    "an empty user name": (
        'servers = ["prod"]\n[[step]]\nat = 0\nuser = ""\nconnect = "prod"\n',
        r"bad\.toml:4: a name cannot be empty",
    ),
    "an empty expectation target": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a"\naudio_on = ""\n',
        r"bad\.toml:2: unknown server ''",
    ),
    "a control character in a name": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a\\u001b[31m"\naudio_on = "prod"\n',
        r"bad\.toml:4: a name has no control characters: 'a\\x1b\[31m'",
    ),
    "a name with a space at its end": ('servers = ["prod "]\n', r"bad\.toml:1: a name does not"),
    "an expectation after the run": (
        'servers = ["prod"]\nduration_s = 10\n[[expect]]\nat = 12\nuser = "a"\naudio_on = "prod"\n',
        r"bad\.toml:4: time 12 is after the run ends \(duration_s = 10\)",
    ),
    "an unknown key in an inline table": (
        'servers = ["prod"]\nstep = [\n  { at = 0, user = "a", connect = "prod" },\n\n'
        '  { at = 1, user = "a", conect = "prod" },\n]\n',
        r"bad\.toml:5: unknown key `conect` - at `\$.step\[1\]`",
    ),
    "a duration on a step that has none": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nconnect = "prod"\nfor_s = 3\n',
        r"bad\.toml:6: for_s goes with log_fault, room_service_fault, .*, not connect",
    ),
    "an audio fault that also names a user": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\naudio_stall = "a"\n',
        r"bad\.toml:4: audio_stall names its user as its value, and takes no user key",
    ),
    "a health expectation without its state": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a"\nhealth_on = "prod"\n',
        r"bad\.toml:2: health_on and health go together",
    ),
    "a health state that does not exist": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a"\nhealth_on = "prod"\nhealth = "fine"\n',
        r"bad\.toml:6: health is one of connecting, ok, audio_stalled, phone_absent, "
        r"unavailable; found 'fine'",
    ),
    "a fault that lasts for ever": (
        'servers = ["prod"]\n[[step]]\nat = 1\nlog_fault = "prod"\nfor_s = inf\n',
        r"bad\.toml:5: for_s must be from 0.001 to 3600 s; found inf",
    ),
    "a fault on an unknown server": (
        'servers = ["prod"]\n[[step]]\nat = 1\nroom_service_fault = "qa"\n',
        r"bad\.toml:4: unknown server 'qa'",
    ),
    "a shared log that is neither true nor false": (
        'servers = ["prod"]\nshared_log = "yes"\n',
        r"bad\.toml:2: Expected `bool`, got `str` - at `\$\.shared_log`",
    ),
    "a close noticed late on a step that closes nothing": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\ndisconnect = true\n'
        "noticed_after_s = 3\n",
        r"bad\.toml:6: noticed_after_s goes with connect, not disconnect",
    ),
    "a close never noticed": (
        'servers = ["prod"]\n[[step]]\nat = 1\nuser = "a"\nconnect = "prod"\n'
        "noticed_after_s = inf\n",
        r"bad\.toml:6: noticed_after_s must be from 0.001 to 3600 s; found inf",
    ),
    "two things expected at once": (
        'servers = ["prod"]\n[[expect]]\nat = 1\nuser = "a"\nsession_on = "prod"\n'
        'audio_on = "prod"\n',
        r"bad\.toml:2: an expectation takes exactly one of audio_on, no_audio_on, session_on",
    ),
    "too many servers": (
        "servers = [" + ", ".join(f'"s{i}"' for i in range(17)) + "]\n",
        r"bad\.toml:1: a scenario has at most 16 servers",
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


def test_a_file_larger_than_a_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_bytes(b'servers = ["prod"]\n' + b"# padding\n" * 200_000)
    with pytest.raises(ScenarioError, match=r"big\.toml: larger than 1024 KiB"):
        load(str(path))


def test_a_folder_is_not_a_scenario(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not a scenario file"):
        load(str(tmp_path))


def test_a_file_name_that_cannot_name_a_scenario_needs_a_name_key(tmp_path: Path) -> None:
    path = tmp_path / " .toml"
    path.write_text('servers = ["prod"]\n')
    with pytest.raises(ScenarioError, match="not a usable scenario name; set `name`"):
        load(str(path))
    path.write_text('name = "spaced"\nservers = ["prod"]\n')
    assert load(str(path)).name == "spaced"


def test_an_unknown_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ScenarioError, match=r"no-such: no such scenario file.*rapid-switch"):
        load("no-such")


def test_faults_last_for_s_seconds_five_by_default(tmp_path: Path) -> None:
    path = tmp_path / "faults.toml"
    path.write_text(
        'servers = ["prod"]\n'
        '[[step]]\nat = 1\nlog_fault = "prod"\n'
        '[[step]]\nat = 2\nroom_service_fault = "prod"\nfor_s = 0.5\n'
        '[[expect]]\nat = 3\nuser = "a"\nno_session_on = "prod"\n'
    )
    scenario = load(str(path))
    assert [(s.action, s.for_s) for s in scenario.step] == [
        ("log_fault", None),
        ("room_service_fault", 0.5),
    ]
    assert [(e.kind, e.server) for e in scenario.expect] == [("no_session_on", "prod")]
