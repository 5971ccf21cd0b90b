"""The spend guard: a daily limit of images submitted and a floor of Ximilar credits, and a pause by hand.

When any of them holds, submission pauses: uploads are still owned (their items written) and handed on
to the sweeper with the reason, as throttled ones are, and nothing is posted until the next UTC day
(a new day's counter), or `xasync resume` (which ends a pause by hand and lifts the day's limit and
the credits floor for that day). The sweeper asks the same guard before it submits anything again.

State lives in two small items of the requests table (`dynamodb.control`): `control#pause`, and
`control#spend#<day>`, whose count is one atomic ADD with a condition, so concurrent submitters never
overshoot the limit. With no limit, no floor and no pause, a check costs one GetItem per invocation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from ximilar_async.services.errors import XimilarError
from ximilar_async.services.ports import SpendLedger, XimilarApi

logger = logging.getLogger(__name__)

CREDITS_MAX_AGE_SECONDS: Final = 60.0  # a warm function asks Ximilar for its credits at most this often


@dataclass
class SpendGuard:
    ledger: SpendLedger  # the pause and each day's count (`dynamodb.ControlStore`)
    ximilar: XimilarApi | None  # asked for the credits left; None only without a credits floor
    daily_limit: int  # images per UTC day; 0: no limit
    credits_floor: int  # pause when fewer credits remain; 0: never asked
    clock: Callable[[], datetime]
    _credits: tuple[float, int] | None = field(default=None, init=False)  # (monotonic time read, credits)

    def __post_init__(self) -> None:
        if self.credits_floor and self.ximilar is None:
            raise ValueError("a credits floor needs the Ximilar client that reads the credits left")

    def paused(self) -> str | None:
        """Why submission is paused now, or None; reads only (the sweeper and `xasync status` ask this)."""
        return self._hold(daily_limit=self.daily_limit)

    def check(self) -> str | None:
        """Why nothing may be posted in this invocation, or None (a pause, or credits under the floor).

        The daily limit is not read here: `reserve` checks and counts it in one write."""
        return self._hold(daily_limit=0)

    def _hold(self, *, daily_limit: int) -> str | None:
        """The one reading of the guard's state: a pause by hand; else, unless `xasync resume` lifted the
        day, `daily_limit` reached (0: not asked) or the credits under the floor."""
        reason = self.ledger.pause_reason()
        if reason is not None:
            return f"submission paused by hand: {reason}"
        if not daily_limit and not self.credits_floor:
            return None
        day = self.ledger.spend_day(self.clock().date())
        if day.resumed:
            return None
        if daily_limit and day.submitted >= daily_limit:
            return self._limit_reason()
        return self._credits_reason()

    def reserve(self, images: int) -> str | None:
        """Count `images` against today's limit: None when they fit (counted), else the reason (not counted)."""
        if not self.daily_limit:
            return None
        now = self.clock()
        if self.ledger.reserve_submissions(now.date(), images, self.daily_limit, now):
            return None
        return self._limit_reason()

    def _limit_reason(self) -> str:
        return f"daily submit limit of {self.daily_limit} images reached (until the next UTC day or `xasync resume`)"

    def _credits_reason(self) -> str | None:
        if not self.credits_floor or self.ximilar is None:  # no floor (__post_init__: a floor has its client)
            return None
        if self._credits is None or time.monotonic() - self._credits[0] > CREDITS_MAX_AGE_SECONDS:
            try:
                self._credits = (time.monotonic(), self.ximilar.remaining_credits())
            except XimilarError as error:
                # Not knowing is not a reason to stop: the daily limit still bounds the spend.
                logger.warning("Ximilar's credits could not be read", extra={"error": str(error)})
                return None
        left = self._credits[1]
        if left < self.credits_floor:
            return f"{left} Ximilar credits left, under the floor of {self.credits_floor} (until `xasync resume`)"
        return None
