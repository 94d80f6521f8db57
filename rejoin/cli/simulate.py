"""`rejoin compare`, `rejoin simulate` (in the simulated world, or live with the real SDK)
and `rejoin loopback-server`."""

from __future__ import annotations

import argparse
import secrets
import socket
from pathlib import Path

from actors.policy import POLICIES, Policy
from actors.redaction import register_secret
from events.locations import is_postgres_url, open_log, shown_location
from events.log import EventStore
from rejoin.cli.usage import UsageError, print_json
from simulations.report import comparison_table, result_lines
from simulations.scenario import Scenario, load
from simulations.scenario_runner import RunResult, run


def _scenarios(references: list[str]) -> list[Scenario]:
    return [load(reference) for reference in references]


def compare(args: argparse.Namespace) -> int:
    scenarios = _scenarios(args.scenarios)
    named: dict[str, str] = {}
    for reference, scenario in zip(args.scenarios, scenarios, strict=True):
        if scenario.name in named:
            msg = (
                f"{reference}: its scenario is named {scenario.name!r}, as is "
                f"{named[scenario.name]}'s; the scenarios of a comparison need distinct names"
            )
            raise UsageError(msg)
        named[scenario.name] = reference
    results = [
        run(scenario, policy, seed=args.seed)
        for scenario in scenarios
        for policy in POLICIES.values()
    ]
    if args.json:
        print_json(results)
    else:
        print("\n".join(comparison_table(scenarios, list(POLICIES.values()), results)))
    return 0


def simulate(args: argparse.Namespace) -> int:
    policy = POLICIES[args.policy]
    scenarios = _scenarios(args.scenarios)
    if args.sfu != "sim":
        results = _simulate_live(args, scenarios, policy)
    elif args.events is not None:
        results = [_simulate_into(args.events, scenarios, policy, args.seed)]
    else:
        results = [run(scenario, policy, seed=args.seed) for scenario in scenarios]
    if args.json:
        print_json(results)
    else:
        for result in results:
            print("\n".join(result_lines(result)))
    return 0 if all(result.passed for result in results) else 1


def _simulate_live(
    args: argparse.Namespace, scenarios: list[Scenario], policy: Policy
) -> list[RunResult]:
    # The SDK, aiortc and aiohttp load only for live runs: they double the CLI's start-up.
    from actors.livekit_connector import LiveKitSettings  # noqa: PLC0415
    from rejoin.settings import SettingsError, livekit_from_environment  # noqa: PLC0415
    from simulations.live_runner import refuse_unsupported, run_live  # noqa: PLC0415

    if args.sfu == "loopback":
        try:
            from simulations.loopback import LoopbackServer, LoopbackThread  # noqa: PLC0415
        except ModuleNotFoundError as error:
            msg = f"--sfu loopback needs {error.name}: pip install 'rejoin[loopback]'"
            raise UsageError(msg) from None

    for scenario in scenarios:
        refuse_unsupported(scenario, loopback=args.sfu == "loopback")
    store = _new_log(args.events, scenarios) if args.events is not None else None
    loopback = None
    try:
        if args.sfu == "loopback":
            secret = secrets.token_urlsafe(32)
            loopback = LoopbackThread(
                LoopbackServer(api_key="devkey", api_secret=secret, port=_free_port())
            )
            loopback.start()
            settings = LiveKitSettings(
                url=loopback.url, api_key="devkey", api_secret=secret, single_peer_connection=False
            )
        else:
            try:
                settings = livekit_from_environment()
            except SettingsError as error:
                raise UsageError("; ".join(error.faults)) from None
        return [
            run_live(scenario, policy, settings, loopback=loopback, store=store)
            for scenario in scenarios
        ]
    finally:
        if loopback is not None:
            loopback.stop()
        if store is not None:
            store.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_server(args: argparse.Namespace) -> int:
    from simulations.loopback import serve  # noqa: PLC0415

    register_secret(args.secret)
    if args.departure_timeout < 0:
        msg = f"--departure-timeout: {args.departure_timeout} is not 0 or more seconds"
        raise UsageError(msg)
    print(f"loopback LiveKit at ws://{args.host}:{args.port} (api key devkey)", flush=True)
    serve(args.host, args.port, args.secret, departure_timeout_s=args.departure_timeout)
    return 0


def _simulate_into(
    location: str, scenarios: list[Scenario], policy: Policy, seed: int | None
) -> RunResult:
    store = _new_log(location, scenarios)
    try:
        return run(scenarios[0], policy, seed=seed, store=store)
    finally:
        store.close()


def _new_log(location: str, scenarios: list[Scenario]) -> EventStore:
    """The new log `--events` names, for one scenario's run: a file that does not exist yet,
    or a database that holds no events yet."""
    shown = shown_location(location)
    if len(scenarios) != 1:
        msg = f"{shown}: --events records one run; name one scenario"
        raise UsageError(msg)
    if not is_postgres_url(location) and Path(location).exists():
        msg = f"{shown}: already exists; --events writes a new log"
        raise UsageError(msg)
    store = open_log(location)
    if next(iter(store.read_all()), None) is not None:
        store.close()
        msg = f"{shown}: already holds events; --events writes a new log"
        raise UsageError(msg)
    return store
