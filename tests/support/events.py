"""The example events of events/: the same files serve `sam local invoke`, `xasync invoke` and the tests."""

from __future__ import annotations

import json
from typing import Any

from xasync.template import PROJECT_ROOT

EVENTS = PROJECT_ROOT / "events"


def load_event(name: str) -> dict[str, Any]:
    """A fresh copy of events/<name> (a test may change it)."""
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event
