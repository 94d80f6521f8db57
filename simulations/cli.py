"""The `rejoin` command (DESIGN section 8): compare, simulate, replay.

Exit codes: 0 done (for `simulate`: every expectation and invariant held), 1 an expectation or an
invariant failed, 2 bad input (a one-line message on stderr naming the file and the fault).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from actors.policy import POLICIES, Policy, UnknownPolicy, policy_named
from events.catalog import RunStarted
from events.envelope import Envelope
from events.log import LogError, read_valid_prefix
from events.sqlite_store import SQLiteStore
from simulations.bench import report

if TYPE_CHECKING:
    from actors.livekit_connector import LiveKitSettings
from simulations.metrics import RUN_STREAM, Metrics, compute
from simulations.report import comparison_table, result_lines, timeline_lines
from simulations.scenario import BUILT_IN, Scenario, ScenarioError, load
from simulations.scenario_runner import RunResult, run

LIVEKIT_VARIABLES = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


class UsageError(Exception):
    """Bad input from the command line; its message is the one line printed."""


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str | None
    policy: str | None
    seed: int | None
    metrics: Metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.command(args)
    except (UsageError, ScenarioError, UnknownPolicy, LogError) as error:
        print(f"rejoin: {error}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rejoin",
        description="Keep a LiveKit bridge in its user's room across reconnects, and prove it.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="the seed's success metrics for every policy, side by side"
    )
    compare.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=list(BUILT_IN))
    compare.add_argument("--seed", type=int, help="override the scenarios' seeds")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")
    compare.set_defaults(command=_compare)

    simulate = commands.add_parser("simulate", help="run scenarios under one policy")
    simulate.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    simulate.add_argument("--policy", default="supervised", help=f"one of {', '.join(POLICIES)}")
    simulate.add_argument("--seed", type=int, help="override the scenarios' seeds")
    simulate.add_argument("--json", action="store_true", help="print the results as JSON")
    simulate.add_argument("--events", type=Path, metavar="PATH", help="write the event log here")
    simulate.add_argument(
        "--sfu",
        choices=["sim", "loopback", "livekit"],
        default="sim",
        help="the simulated LiveKit (default); the loopback server with the real SDK, in real "
        "time; or the LiveKit at LIVEKIT_URL with LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
    )
    simulate.set_defaults(command=_simulate)

    loopback = commands.add_parser(
        "loopback-server", help="the LiveKit-compatible loopback server (key devkey)"
    )
    loopback.add_argument("--host", default="127.0.0.1")
    loopback.add_argument("--port", type=int, default=7880)
    loopback.add_argument(
        "--secret", default="secret", help="the API secret of key devkey (default: secret)"
    )
    loopback.set_defaults(command=_loopback_server)

    replay = commands.add_parser("replay", help="rebuild sessions from an event log")
    replay.add_argument("log", type=Path, metavar="LOG")
    replay.add_argument("--user", help="only this user's timeline")
    replay.add_argument("--policy", help="re-run the recorded run under this policy")
    replay.add_argument("--json", action="store_true", help="print the results as JSON")
    replay.set_defaults(command=_replay)

    bench = commands.add_parser("bench", help="measure the figures in BENCHMARKS.md")
    bench.set_defaults(command=_bench)
    return parser


def _bench(_args: argparse.Namespace) -> int:
    for line in report():
        print(line, flush=True)
    return 0


def _scenarios(references: list[str]) -> list[Scenario]:
    return [load(reference) for reference in references]


def _compare(args: argparse.Namespace) -> int:
    scenarios = _scenarios(args.scenarios)
    results = [
        run(scenario, policy, seed=args.seed)
        for scenario in scenarios
        for policy in POLICIES.values()
    ]
    if args.json:
        _print_json(results)
    else:
        print("\n".join(comparison_table(scenarios, list(POLICIES.values()), results)))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    policy = policy_named(args.policy)
    scenarios = _scenarios(args.scenarios)
    if args.sfu != "sim":
        results = _simulate_live(args, scenarios, policy)
    elif args.events is not None:
        results = [_simulate_into(args.events, scenarios, policy, args.seed)]
    else:
        results = [run(scenario, policy, seed=args.seed) for scenario in scenarios]
    if args.json:
        _print_json(results)
    else:
        for result in results:
            print("\n".join(result_lines(result)))
    return 0 if all(result.passed for result in results) else 1


def _simulate_live(
    args: argparse.Namespace, scenarios: list[Scenario], policy: Policy
) -> list[RunResult]:
    # The SDK, aiortc and aiohttp load only for live runs: they double the CLI's start-up.
    from actors.livekit_connector import LiveKitSettings  # noqa: PLC0415
    from simulations.live_runner import refuse_unsupported, run_live  # noqa: PLC0415
    from simulations.loopback_server import LoopbackThread  # noqa: PLC0415

    for scenario in scenarios:
        refuse_unsupported(scenario, loopback=args.sfu == "loopback")
    if args.events is not None and len(scenarios) != 1:
        msg = f"{args.events}: --events records one run; name one scenario"
        raise UsageError(msg)
    if args.events is not None and args.events.exists():
        msg = f"{args.events}: already exists; --events writes a new log"
        raise UsageError(msg)
    store = SQLiteStore(args.events) if args.events is not None else None
    loopback: LoopbackThread | None = None
    try:
        if args.sfu == "loopback":
            secret = secrets.token_urlsafe(32)
            loopback = LoopbackThread(api_key="devkey", api_secret=secret, port=_free_port())
            loopback.start()
            settings = LiveKitSettings(
                url=loopback.url, api_key="devkey", api_secret=secret, single_peer_connection=False
            )
        else:
            settings = _settings_from_environment()
        return [
            run_live(scenario, policy, settings, loopback=loopback, store=store)
            for scenario in scenarios
        ]
    finally:
        if loopback is not None:
            loopback.stop()
        if store is not None:
            store.close()


def _settings_from_environment() -> LiveKitSettings:
    from actors.livekit_connector import LiveKitSettings  # noqa: PLC0415

    values = {name: os.environ.get(name, "") for name in LIVEKIT_VARIABLES}
    missing = [name for name, value in values.items() if not value]
    if missing:
        msg = f"--sfu livekit needs {', '.join(missing)} in the environment"
        raise UsageError(msg)
    return LiveKitSettings(
        url=values["LIVEKIT_URL"],
        api_key=values["LIVEKIT_API_KEY"],
        api_secret=values["LIVEKIT_API_SECRET"],
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _loopback_server(args: argparse.Namespace) -> int:
    from simulations.loopback_server import serve  # noqa: PLC0415

    print(f"loopback LiveKit at ws://{args.host}:{args.port} (api key devkey)", flush=True)
    serve(args.host, args.port, args.secret)
    return 0


def _simulate_into(
    path: Path, scenarios: list[Scenario], policy: Policy, seed: int | None
) -> RunResult:
    if len(scenarios) != 1:
        msg = f"{path}: --events records one run; name one scenario"
        raise UsageError(msg)
    if path.exists():
        msg = f"{path}: already exists; --events writes a new log"
        raise UsageError(msg)
    store = SQLiteStore(path)
    try:
        return run(scenarios[0], policy, seed=seed, store=store)
    finally:
        store.close()


def _replay(args: argparse.Namespace) -> int:
    if not args.log.is_file():
        msg = f"{args.log}: no such log file"
        raise UsageError(msg)
    store = SQLiteStore(args.log)
    try:
        envelopes, corrupt = read_valid_prefix(store)
    finally:
        store.close()
    if corrupt is not None:
        print(
            f"rejoin: {corrupt}; replaying the {len(envelopes)} records before it",
            file=sys.stderr,
        )
    recorded, recorded_policy = _recorded_run(envelopes)
    if args.policy is not None:
        return _rerun(args, recorded)
    events = [e for e in envelopes if e.stream != RUN_STREAM]
    result = ReplayResult(
        scenario=recorded.name if recorded else None,
        policy=recorded_policy,
        seed=recorded.seed if recorded else None,
        metrics=compute(events, end_ms=_end_ms(recorded, events)),
    )
    if args.json:
        _print_json([result])
    else:
        shown = [e for e in events if args.user is None or e.user == args.user]
        print("\n".join(timeline_lines(shown, result.metrics)))
    return 0


def _rerun(args: argparse.Namespace, recorded: Scenario | None) -> int:
    policy = policy_named(args.policy)
    if recorded is None:
        msg = f"{args.log}: holds no recorded run to re-run (it was not written by simulate)"
        raise UsageError(msg)
    result = run(recorded, policy, seed=recorded.seed)
    if args.json:
        _print_json([result])
    else:
        print("\n".join(result_lines(result)))
    return 0 if result.passed else 1


def _recorded_run(envelopes: list[Envelope]) -> tuple[Scenario | None, str | None]:
    """The scenario (with the seed it ran on) and the policy a log's run recorded, if any."""
    for envelope in envelopes:
        if isinstance(envelope.event, RunStarted):
            scenario = msgspec.json.decode(envelope.event.scenario, type=Scenario)
            return msgspec.structs.replace(
                scenario, seed=envelope.event.seed
            ), envelope.event.policy
    return None, None


def _end_ms(recorded: Scenario | None, events: list[Envelope]) -> int | None:
    if recorded is not None:
        return round(recorded.end_s * 1000)
    return max((e.time_ms for e in events), default=None)


def _print_json(results: Sequence[RunResult | ReplayResult]) -> None:
    sys.stdout.write(msgspec.json.encode(list(results)).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
