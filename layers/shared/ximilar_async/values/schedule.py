"""When a pending request is checked next: soon after submission, then backing off with jitter.

Ximilar suggests polling status "ideally each minute"; webhooks normally arrive first, so the first
check waits a little longer (`FirstCheckDelaySeconds`, 2 minutes by default) and later ones back off
to spare API calls on long queues.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Final

MAX_CHECK_DELAY: Final = timedelta(minutes=30)


def next_check_delay(first: timedelta, checks_done: int, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff from `first` (first, 2x, 4x, ..., capped) with jitter over its upper half."""
    base = min(first * 2**checks_done, MAX_CHECK_DELAY)
    jitter = (rng or random).uniform(0.5, 1.0)
    return timedelta(seconds=base.total_seconds() * jitter)
