"""What one sweeper run did: counted by the sweeper, kept in the last-sweep item, shown by `xasync status`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepOutcome:
    items_read: int = 0  # items DynamoDB returned from the due index
    taken: int = 0
    api_calls: int = 0
    recorded: int = 0
    rescheduled: int = 0
    failed_too_old: int = 0
    failed_by_ximilar: int = 0
    resubmitted_images: int = 0
    finished_meanwhile: int = 0  # requests a webhook finished while this run was checking them
    found_finished: int = 0  # due requests whose images the webhook had all recorded: nothing to do
    incomplete: int = 0  # requests Ximilar answered DONE with images missing: checked again later
    errors: int = 0  # requests whose sweep ended in an unexpected error
    storage_errors: int = 0  # requests whose sweep DynamoDB failed (throttled, 5xx): back after their hold
    read_failures: int = 0  # run-level reads or writes that failed after their retries: the run ended there
    failed_after_errors: int = 0  # requests given up after MAX_SWEEP_FAILURES such errors
    requests_recorded: int = 0  # DONE requests whose results this run recorded (no webhook had)
    images_failed: int = 0  # images this run ended FAILED
    paused: int = 0  # requests not submitted again because the spend guard paused submission
    stopped: str | None = None  # why the run stopped early: deadline, budget, throttled, storage
    by_state: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # upload to result, seconds, per image recorded
