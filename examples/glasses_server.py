"""A glasses endpoint that embeds rejoin: the smallest server of the seed's shape.

Glasses connect to `/glasses/{user}` over a WebSocket. While they are connected, the phone's
audio, which rejoin's bridge hears in the user's LiveKit room, reaches this server's app (a
meter standing in for transcription: every half second it tells the glasses how much audio it
heard), and each change of the user's health goes to the glasses too. When the glasses leave,
rejoin keeps the session for its grace period; come back within it, to this server or after a
visit to another one, and the audio comes back.

    LIVEKIT_URL=ws://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... REJOIN_SERVER=prod \\
        python examples/glasses_server.py --port 8080

Every setting of `rejoin serve --help` applies (the log goes to `REJOIN_LOG`, `rejoin.db`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from aiohttp import web

from rejoin import AsyncRuntime, Settings, SettingsError

RUNTIME: web.AppKey[AsyncRuntime] = web.AppKey("runtime")
METER_S = 0.5
BYTES_PER_MS = 32
"""PCM16LE at 16 kHz, mono."""


async def glasses(request: web.Request) -> web.WebSocketResponse:
    runtime = request.app[RUNTIME]
    user = request.match_info["user"]
    socket = web.WebSocketResponse(heartbeat=10)
    await socket.prepare(request)
    audio, healths = runtime.audio(user), runtime.health_changes()
    # Answer the glasses only once rejoin has the connection in its log.
    await runtime.glasses_connected(user)
    await socket.send_json({"connected": user})
    heard = [0]

    async def listen() -> None:
        async for chunk in audio:
            heard[0] += len(chunk.pcm) // BYTES_PER_MS

    async def meter() -> None:
        while True:
            await asyncio.sleep(METER_S)
            if heard[0]:
                await socket.send_json({"heard_ms": heard[0]})
                heard[0] = 0

    async def tell_health() -> None:
        async for changed, health in healths:
            if changed == user:
                await socket.send_json({"health": health.state, "reason": health.reason})

    tasks = [asyncio.create_task(work()) for work in (listen, meter, tell_health)]
    try:
        async for _message in socket:
            pass  # the glasses' own messages are not this example's business
    finally:
        runtime.close_audio(audio)
        runtime.close_health(healths)
        for task in tasks:
            task.cancel()
        await runtime.glasses_disconnected(user)
    return socket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8080)
    port = parser.parse_args().port
    try:
        settings = Settings.from_environment()
    except SettingsError as error:
        print("\n".join(f"glasses_server: {fault}" for fault in error.faults), file=sys.stderr)
        return 2

    async def start(app: web.Application) -> None:
        app[RUNTIME] = await AsyncRuntime.start(settings)

    async def stop(app: web.Application) -> None:
        with contextlib.suppress(KeyError):
            await app[RUNTIME].close()

    app = web.Application()
    app.add_routes([web.get("/glasses/{user}", glasses)])
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
