"""When a pending request is checked next: soon after submission, then backing off with jitter.

Ximilar suggests polling status "ideally each minute"; webhooks normally arrive first, so the first
check waits a little longer and later ones back off to spare API calls on long queues.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Final

FIRST_CHECK_DELAY: Final = timedelta(minutes=2)
MAX_CHECK_DELAY: Final = timedelta(minutes=30)


def next_check_delay(checks_done: int, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff (1, 2, 4, ... minutes, capped) with full jitter over its upper half."""
    base = min(timedelta(minutes=2**checks_done), MAX_CHECK_DELAY)
    jitter = (rng or random).uniform(0.5, 1.0)
    return timedelta(seconds=base.total_seconds() * jitter)
