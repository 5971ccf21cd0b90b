"""An emulator of Ximilar's asynchronous request API, for local runs and tests (never deployed).

It serves the endpoints of the reference on 127.0.0.1, really fetches and reads each record's image,
moves requests CREATED -> PROCESSING -> DONE, posts webhooks, and has fault knobs settable at start
(`python -m ximilar_emulator --help`) and at run time (`/_emulator/...`, see `control.py`).
"""

from ximilar_emulator.control import EmulatorControl
from ximilar_emulator.server import EmulatorServer
from ximilar_emulator.state import Knobs

__all__ = ["EmulatorControl", "EmulatorServer", "Knobs"]
