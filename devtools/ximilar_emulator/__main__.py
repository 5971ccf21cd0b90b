"""`python -m ximilar_emulator --port 0 --token T [knobs]`: serve until SIGINT/SIGTERM.

Prints `ximilar-emulator listening on <url>` once it accepts connections (tests read the port from it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import fields

from ximilar_emulator.server import EmulatorServer
from ximilar_emulator.state import Knobs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ximilar-emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", required=True, help="the API token clients must send")
    parser.add_argument("--public-url", help="base URL of upscaled images and `next` links (default: the bound one)")
    parser.add_argument("--seed", type=int, help="seed of the webhook drop/duplicate/jitter dice")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request to stderr")
    defaults = Knobs()
    for knob in fields(Knobs):
        flag = "--" + knob.name.replace("_", "-")
        default = getattr(defaults, knob.name)
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda text: text.lower() == "true", default=default, metavar="true|false")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.access_log else logging.WARNING)
    knobs = Knobs(**{knob.name: getattr(args, knob.name) for knob in fields(Knobs)})
    server = EmulatorServer(
        args.token, knobs, host=args.host, port=args.port, public_url=args.public_url, seed=args.seed
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    server.start()
    print(f"ximilar-emulator listening on {server.url}", flush=True)
    stopping.wait()
    server.stop()
    print("ximilar-emulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
