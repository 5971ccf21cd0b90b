"""Backfill: objects already in a bucket enter the pipeline as uploads do, each version once, at a bounded pace.

The one rule of "which objects to send" (`Backfiller.run_batch`), used by the backfill function (one
Distributed Map batch per invocation) and by the laptop path (`xasync.ops.backfill`):
1. held back, before any write, while the spend guard is paused or the submit queue holds more than
   `max_queue_depth` messages: `BackfillHeld`, which the state machine retries with backoff (the batch
   is sent again whole, later);
2. objects with an image item for their version are skipped (one BatchGetItem of the batch's uris);
3. for the others, a marker `control#queued#<record id>` is written first, conditionally (`writes.put`):
   it applies when there is none, when it is this run's own (a retried batch sends again, at least once),
   or when it is older than `MARKER_LEASE` (a message lost, or a run stopped between its marker and its
   send: sent again). An object whose marker is another run's, and fresh, was sent and is waiting in the
   queue: a second run sends nothing, even before the submit function has read the first run's messages;
4. SendMessageBatch (10 a call) of the notification S3 would have sent; a message SQS refuses is
   unmarked again and counted failed;
5. the run's counters (`control#backfill#<run>`) grow by one ADD.

A message sent twice anyway (a retried batch) is harmless: the submit function claims a record id once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ximilar_async.services.errors import BackfillHeld
from ximilar_async.services.ports import BackfillLedger, KnownImages, SubmissionPause, SubmitQueue
from ximilar_async.values.backfill import (
    MAX_ITEMS_PER_BATCH,
    MAX_REASONS,
    Batch,
    BatchOutcome,
    ExistingObject,
    notification,
)
from ximilar_async.values.clock import utc_now

logger = logging.getLogger(__name__)


@dataclass
class Backfiller:
    images: KnownImages
    ledger: BackfillLedger
    queue: SubmitQueue
    region: str
    guard: SubmissionPause | None  # None: never held by the spend guard (a laptop run on the local stack)
    max_queue_depth: int  # held while the submit queue holds more; 0: never held by the queue
    allowed: Callable[[ExistingObject], str | None]  # why an object may not be backfilled, or None
    clock: Callable[[], datetime] = utc_now

    def hold_reason(self) -> str | None:
        """Why a batch must wait now, or None: the spend guard's pause or limit, or a deep submit queue."""
        if self.guard is not None and (reason := self.guard.paused()) is not None:
            return f"spend guard: {reason}"
        if self.max_queue_depth and (depth := self.queue.depth()) > self.max_queue_depth:
            return f"the submit queue holds {depth} messages, over the backfill's bound of {self.max_queue_depth}"
        return None

    def run_batch(self, batch: Batch) -> BatchOutcome:
        """Send what the batch holds that the pipeline does not know yet; raises BackfillHeld before any write."""
        if len(batch.objects) > MAX_ITEMS_PER_BATCH:
            raise ValueError(f"{len(batch.objects)} objects in a batch: at most {MAX_ITEMS_PER_BATCH}")
        reason = self.hold_reason()
        if reason is not None:
            raise BackfillHeld(reason)
        outcome = BatchOutcome(total=len(batch.objects) + len(batch.rejected))
        for rejected in batch.rejected:
            self._fail(outcome, 1, f"{rejected.item}: {rejected.reason}")
        wanted: list[ExistingObject] = []
        for found in batch.objects:
            refusal = self.allowed(found)
            if refusal is None:
                wanted.append(found)
            else:
                self._fail(outcome, 1, refusal)
        known = self.images.images_by_uri(dict.fromkeys(found.uri for found in wanted), consistent=False)
        new = [
            found for found in wanted if (image := known.get(found.uri)) is None or image.record_id != found.record_id
        ]
        outcome.already_known += len(wanted) - len(new)
        now = self.clock()
        marked = self.ledger.mark_queued([found.record_id for found in new], batch.run.name, now)
        to_send = [found for found in new if found.record_id in marked]
        outcome.already_queued += len(new) - len(to_send)
        failed = set(self.queue.send([json.dumps(notification(self.region, found)) for found in to_send]))
        refused = [found for number, found in enumerate(to_send) if number in failed]
        outcome.enqueued += len(to_send) - len(refused)
        if refused:
            self.ledger.unmark_queued([found.record_id for found in refused], batch.run.name)
            self._fail(outcome, len(refused), f"SQS refused {len(refused)} message(s) of this batch")
        self.ledger.count_backfill(batch.run, outcome, now)
        return outcome

    def _fail(self, outcome: BatchOutcome, count: int, reason: str) -> None:
        outcome.failed += count
        if len(outcome.reasons) < MAX_REASONS:
            outcome.reasons.append(reason)
        logger.warning("object not backfilled", extra={"reason": reason})
