"""The command line's entry: the parser of every command, and how each way of ending becomes
an exit code (see `rejoin.cli`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import msgspec

from actors.connector import RoomServerError
from actors.policy import POLICIES
from actors.redaction import RedactingFilter, redact
from events.log import LogError
from rejoin.cli import replay as replaying
from rejoin.cli import simulate as simulating
from rejoin.cli.usage import Parser, UsageError, counts, port, seconds, seed, whole
from simulations.bench import report
from simulations.load import LoadConfig, run_load
from simulations.report import printable
from simulations.scale import report as scale_report
from simulations.scenario import BUILT_IN, ScenarioError

SIGPIPE_EXIT = 141
INTERRUPTED_EXIT = 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        # A service logs as its settings say (`rejoin.logs`); the one-shot commands, here.
        if args.command is not _serve:
            _log_to_stderr()
        code: int = args.command(args)
        sys.stdout.flush()
    except (UsageError, ScenarioError, LogError, RoomServerError) as error:
        print(f"rejoin: {printable(redact(str(error)))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Whoever read stdout has gone (`rejoin compare | head`): stop quietly. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    return code


def _log_to_stderr() -> None:
    """Log records at `REJOIN_LOG_LEVEL` (default: warning) on stderr, one redacted line each.

    Unless a level is asked for, the runtime's and the SDK's own records stay quiet: what
    they report is in the event log, or reaches the user as the one-line error of the failure
    it leads to (a simulated log fault, say, is no news to whoever injected it).
    """
    root = logging.getLogger()
    level = os.environ.get("REJOIN_LOG_LEVEL", "").upper()
    levels = {name: number for name, number in logging.getLevelNamesMapping().items() if name}
    if level and level not in levels:
        msg = f"REJOIN_LOG_LEVEL: {level.lower()!r} is not a level (debug, info, warning, error)"
        raise UsageError(msg)
    root.setLevel(levels.get(level, logging.WARNING))
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("rejoin: %(name)s: %(message)s"))
        root.addHandler(handler)
    if not level:
        for quiet in ("livekit", "actors"):
            logging.getLogger(quiet).setLevel(logging.CRITICAL)
    # LiveKit's own development secret is shorter than PyJWT would like; that is not news
    # worth two lines on every run against a dev server.
    warnings.filterwarnings("ignore", message="The HMAC key is .* below the minimum")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rejoin",
        description="Keep a LiveKit bridge in its user's room across reconnects, and prove it.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="the seed's success metrics for every policy, side by side"
    )
    compare.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=list(BUILT_IN))
    compare.add_argument("--seed", type=seed, help="override the scenarios' seeds")
    compare.add_argument("--json", action="store_true", help="print the results as JSON")
    compare.set_defaults(command=simulating.compare)

    simulate = commands.add_parser("simulate", help="run scenarios under one policy")
    simulate.add_argument("scenarios", nargs="+", metavar="SCENARIO")
    simulate.add_argument("--policy", default="supervised", choices=list(POLICIES))
    simulate.add_argument("--seed", type=seed, help="override the scenarios' seeds")
    simulate.add_argument("--json", action="store_true", help="print the results as JSON")
    simulate.add_argument(
        "--events",
        metavar="LOG",
        help="write the event log here: a new SQLite file, or a postgresql:// URL",
    )
    simulate.add_argument(
        "--sfu",
        choices=["sim", "loopback", "livekit"],
        default="sim",
        help="the simulated LiveKit (default); the loopback server with the real SDK, in real "
        "time; or the LiveKit at LIVEKIT_URL with LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
    )
    simulate.set_defaults(command=simulating.simulate)

    loopback = commands.add_parser(
        "loopback-server", help="the LiveKit-compatible loopback server (key devkey)"
    )
    loopback.add_argument("--host", default="127.0.0.1")
    loopback.add_argument("--port", type=port, default=7880)
    loopback.add_argument(
        "--secret",
        default=os.environ.get("LIVEKIT_API_SECRET") or "secret",
        help="the API secret of key devkey (default: $LIVEKIT_API_SECRET, else secret); "
        "prefer the variable: a flag shows in ps",
    )
    loopback.add_argument(
        "--departure-timeout",
        type=seconds,
        default=20.0,
        metavar="S",
        help="how long a participant whose signal dropped without a leave stays, resumable, "
        "in its room (default 20, as a real server's)",
    )
    loopback.set_defaults(command=simulating.loopback_server)

    replay = commands.add_parser("replay", help="rebuild sessions from an event log")
    replay.add_argument(
        "log", metavar="LOG", help="a SQLite file, or a postgresql:// URL of a database"
    )
    replay.add_argument("--user", help="only this user's timeline")
    replay.add_argument(
        "--policy", choices=list(POLICIES), help="re-run the recorded run under this policy"
    )
    replay.add_argument("--json", action="store_true", help="print the results as JSON")
    replay.add_argument(
        "--html",
        type=Path,
        metavar="PATH",
        help="write a picture of each user's timeline across servers to this HTML file",
    )
    replay.set_defaults(command=replaying.replay)

    defaults = LoadConfig()
    load = commands.add_parser(
        "load",
        help="a fleet under load: users over servers, churn, a server's failure; JSON figures",
    )
    load.add_argument("--users", type=whole, default=defaults.users)
    load.add_argument("--servers", type=whole, default=defaults.servers)
    load.add_argument(
        "--seconds", type=seconds, default=defaults.seconds, help="simulated seconds in all"
    )
    load.add_argument(
        "--fail-at",
        type=seconds,
        default=defaults.fail_at_s,
        help="when the first server dies and its users all reconnect to the others",
    )
    load.add_argument(
        "--join-rate",
        type=whole,
        default=defaults.join_rate_per_s,
        help="the most joins the simulated LiveKit admits within any second",
    )
    load.add_argument(
        "--server-join-rate",
        type=whole,
        help="each server's own join rate (default: its share, join rate / servers; "
        "0: none, the storm)",
    )
    load.add_argument(
        "--all-on-failing", action="store_true", help="every user starts on the failing server"
    )
    load.add_argument("--switches", type=whole, help="users who switch server (default: 10%%)")
    load.add_argument("--blips", type=whole, help="users who blip (default: 10%%)")
    load.add_argument("--seed", type=seed, default=defaults.seed)
    load.add_argument("--policy", default=defaults.policy, choices=list(POLICIES))
    load.set_defaults(command=_load)

    serve = commands.add_parser(
        "serve",
        help="run one server's runtime as a service: HTTP API, health, metrics, drain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.epilog_from = _serve_help
    serve.set_defaults(command=_serve)

    bench = commands.add_parser("bench", help="measure the figures in BENCHMARKS.md")
    bench.add_argument(
        "--scale",
        type=counts,
        metavar="USERS,...",
        help="measure how the cost grows with these counts of users instead",
    )
    bench.set_defaults(command=_bench)
    return parser


def _bench(args: argparse.Namespace) -> int:
    for line in scale_report(args.scale) if args.scale else report():
        print(line, flush=True)
    return 0


def _load(args: argparse.Namespace) -> int:
    churn = args.users // 10
    try:
        config = LoadConfig(
            users=args.users,
            servers=args.servers,
            seconds=args.seconds,
            fail_at_s=args.fail_at,
            join_rate_per_s=args.join_rate,
            server_join_rate_per_s=args.server_join_rate,
            all_on_failing=args.all_on_failing,
            switches=churn if args.switches is None else args.switches,
            blips=churn if args.blips is None else args.blips,
            seed=args.seed,
            policy=args.policy,
        )
    except ValueError as error:
        raise UsageError(f"load: {error}") from None
    result = run_load(config)
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0 if result.passed else 1


def _serve_help() -> str:
    from rejoin.service.main import HELP  # noqa: PLC0415

    return HELP


def _serve(_args: argparse.Namespace) -> int:
    from rejoin.service.main import serve  # noqa: PLC0415

    return serve()
