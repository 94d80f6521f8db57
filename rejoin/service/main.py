"""`rejoin serve` from the command line: settings from the environment, then the service."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping

from actors.redaction import redact
from rejoin.logs import configure
from rejoin.service.drain import Service
from rejoin.settings import VARIABLES, Settings, SettingsError

__all__ = ["HELP", "serve"]

HELP = "settings, from the environment:\n" + "\n".join(
    f"  {name:<30} {meaning}" for name, meaning in VARIABLES.items()
)


def serve(environment: Mapping[str, str] | None = None) -> int:
    """Run the service of the environment's settings until it drains or is stopped: 0 then, 2
    for settings that cannot be used (a line on stderr for each fault)."""
    try:
        settings = Settings.from_environment(
            os.environ if environment is None else environment, interactive=sys.stderr.isatty()
        )
    except SettingsError as error:
        for fault in error.faults:
            print(f"rejoin: {redact(fault)}", file=sys.stderr)
        return 2
    configure(settings)
    asyncio.run(_run(settings))
    return 0


async def _run(settings: Settings) -> None:
    service = Service(settings)
    await service.start()
    service.install_signal_handlers()
    await service.run()
