"""What the command line takes: a parser whose mistakes are one line and exit 2, and
the types of its arguments."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import msgspec

from simulations.scenario import LIMITS


class UsageError(Exception):
    """Bad input from the command line; its message is the one line printed."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line and exit 2 like every other bad input."""

    epilog_from: Callable[[], str] | None = None
    """Makes the epilog when help is asked for: some need modules the other commands don't."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def seed(text: str) -> int:
    low, high, _ = LIMITS["seed"]
    try:
        seed = int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not low <= seed <= high:
        msg = f"must be from {low:g} to {int(high)}; found {seed}"
        raise argparse.ArgumentTypeError(msg)
    return seed


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        msg = f"not a whole number: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        msg = f"not a number of seconds: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65_535:
        msg = f"must be a port number from 0 to 65535; found {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return port


def counts(text: str) -> list[int]:
    counts = [whole(part) for part in text.split(",")]
    if not all(1 <= count <= 1_000_000 for count in counts):
        msg = f"counts of users are 1 to 1,000,000: {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return counts


def print_json(results: Sequence[msgspec.Struct]) -> None:
    """`results` as one line of JSON on stdout."""
    sys.stdout.write(msgspec.json.encode(list(results)).decode() + "\n")
