"""The composition root: each function's service built from its settings, once per cold start, with its clients.

Handlers call these factories at import (in `coldstart.cold_start()`); the CLI, tests and benchmarks call
the same ones. Settings in, services out: each collaborator is built once and handed to every service
that uses it (the sweeper and the copier get the stores, the Ximilar client and the spend guard
themselves, beside the submitter they resubmit through), and nothing here is called back per request.
The clients a function's typical event uses are built now; the others (`lazy`) on their first use
(`coldstart.aws_client`). Secrets, and the signing keys' rotation rule, are `secret_store`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import timedelta
from typing import Final

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from requests import Session as HttpSession

from ximilar_async import snapstart
from ximilar_async.adapters.dynamodb import Storage, bind_tables
from ximilar_async.adapters.eventbridge import EventBridgePublisher
from ximilar_async.adapters.s3 import S3ArtifactCopier, S3ExportObjects, S3Objects
from ximilar_async.adapters.secrets import SecretSigningKeys, SecretSources
from ximilar_async.adapters.sqs import SqsOutputQueue, SqsSubmitQueue
from ximilar_async.adapters.ximilar import XimilarClient, make_session
from ximilar_async.coldstart import aws_client, building
from ximilar_async.services.backfiller import Backfiller
from ximilar_async.services.completion_events import CompletionEvents
from ximilar_async.services.exporter import Exporter
from ximilar_async.services.output_copier import OutputCopier
from ximilar_async.services.ports import ImageEvents
from ximilar_async.services.result_recorder import ResultRecorder
from ximilar_async.services.spend_guard import SpendGuard
from ximilar_async.services.submitter import Submitter
from ximilar_async.services.sweeper import Sweeper
from ximilar_async.services.webhook_auth import WebhookAuth
from ximilar_async.services.webhook_receiver import WebhookReceiver
from ximilar_async.settings import (
    CONNECT_TIMEOUT_SECONDS,
    BackfillSettings,
    CommonSettings,
    ExportSettings,
    OutputSettings,
    OutputsSettings,
    SubmitSettings,
    SweeperSettings,
    WebhookSettings,
)
from ximilar_async.values.backfill import allowed
from ximilar_async.values.clock import Clock, utc_now

# A copy holds at most PART_BYTES x COPY_CONCURRENCY of the artifact in memory, whatever its size
# (benchmarks/bench_outputs.py measures it); 8 MB parts reach S3's 10,000-part limit at 80 GB.
PART_BYTES: Final = 8 * 1024 * 1024
COPY_CONCURRENCY: Final = 4


def completion_events(settings: CommonSettings, *, lazy: Collection[str] = ()) -> CompletionEvents:
    client = aws_client("events", lazy=lazy)
    return CompletionEvents(EventBridgePublisher(client, settings.event_bus_name, settings.event_source))


def storage(settings: CommonSettings) -> Storage:
    """The stores of the two tables, on one client (the services each get the store they use)."""
    with building() as session:
        tables = bind_tables(settings.images_table, settings.requests_table, session=session)
    return Storage.of(tables, settings.index_shards, timedelta(days=settings.request_retention_days))


def output_queue(settings: OutputSettings, *, lazy: Collection[str] = ()) -> SqsOutputQueue:
    return SqsOutputQueue(aws_client("sqs", lazy=lazy), settings.outputs_queue_url)


def recorder(
    settings: OutputSettings,
    store: Storage,
    objects: S3Objects,
    events: ImageEvents,
    *,
    clock: Clock = utc_now,
    lazy: Collection[str] = (),
) -> ResultRecorder:
    """The one recording path, with the outputs of DONE results queued for the copier."""
    return ResultRecorder(
        store.images,
        store.requests,
        objects,
        settings.results_bucket,
        clock=clock,
        output_location=settings.output_location,
        output_queue=output_queue(settings, lazy=lazy),
        events=events,
    )


def object_store(*, lazy: Collection[str] = ()) -> S3Objects:
    # Signature v4 everywhere: presigned URLs of v2 do not work in newer regions.
    return S3Objects(aws_client("s3", config=Config(signature_version="s3v4"), lazy=lazy))


def ximilar_client(settings: CommonSettings, secrets: SecretSources) -> XimilarClient:
    """The client; its token is read from SSM (cached) per call, so a rotated token is used at once."""
    return XimilarClient(
        settings.ximilar_api_url,
        make_session(token=functools.partial(secrets.api_token, settings.ximilar_token_parameter)),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
        records_per_request=settings.records_per_request,
    )


def webhook_auth(secret_arn: str, secrets: SecretSources, max_age: timedelta | None = None) -> WebhookAuth:
    """The one `WebhookAuth` of a cold start; `max_age` (the webhook's) lets it verify, not only sign."""
    return WebhookAuth(SecretSigningKeys(secrets, secret_arn), max_age)


# An upload finishes an image only when it fails: the submit function's event bus client is built when first used.
SUBMIT_LAZY: Final = frozenset({"events"})


def _submitting(
    settings: SubmitSettings, *, clock: Clock, events: ImageEvents, lazy: Collection[str]
) -> tuple[Storage, XimilarClient, SpendGuard, Submitter]:
    """A submitter and what it is built of, each part once: the stores, the Ximilar client and the spend
    guard, which the sweeper and the copier are given too (they resubmit through the submitter). A tuple:
    a dataclass compiles its methods at import, most of a millisecond of every cold start."""
    secrets = SecretSources.create(lazy=lazy)
    store = storage(settings)
    ximilar = ximilar_client(settings, secrets)
    guard = SpendGuard(store.control, ximilar, settings.daily_submit_limit, settings.min_remaining_credits, clock)
    objects = object_store(lazy=lazy)
    auth = webhook_auth(settings.webhook_secret_arn, secrets)
    submit = Submitter(
        store.images, store.requests, ximilar, objects, auth, settings, clock=clock, guard=guard, events=events
    )
    return store, ximilar, guard, submit


def submitter(
    settings: SubmitSettings,
    *,
    clock: Clock = utc_now,
    events: CompletionEvents | None = None,
    lazy: Collection[str] = (),
) -> Submitter:
    events = events or completion_events(settings, lazy=lazy)
    *_, submit = _submitting(settings, clock=clock, events=events, lazy=lazy)
    return submit


def webhook_receiver(settings: WebhookSettings) -> WebhookReceiver:
    """The webhook function's service. S3 holds only results too large for their item and payloads of
    unknown requests: its client is built when first used."""
    secrets = SecretSources.create()
    store = storage(settings)
    recording = recorder(settings, store, object_store(lazy={"s3"}), completion_events(settings))
    auth = webhook_auth(settings.webhook_secret_arn, secrets, timedelta(seconds=settings.max_request_age_seconds))
    source = ximilar_client(settings, secrets)
    return WebhookReceiver(
        recording, store.requests, auth, settings.max_webhook_body_bytes, source, settings.result_source
    )


# A sweep mostly finds nothing due: it reads the due index and writes its summary, DynamoDB only.
SWEEP_LAZY: Final = frozenset({"secretsmanager", "ssm", "s3", "sqs", "events"})


def sweeper(settings: SweeperSettings, *, clock: Clock = utc_now) -> Sweeper:
    """The sweeper function's service. What a due request needs (Ximilar's token, the signing key, S3,
    the outputs queue, the event bus) gets its client when first used (`SWEEP_LAZY`)."""
    events = completion_events(settings, lazy=SWEEP_LAZY)
    store, ximilar, guard, submit = _submitting(settings, clock=clock, events=events, lazy=SWEEP_LAZY)
    recording = recorder(settings, store, object_store(lazy=SWEEP_LAZY), events, clock=clock, lazy=SWEEP_LAZY)
    sweeper = Sweeper(
        store.requests, store.images, store.control, ximilar, recording, submit, settings, clock=clock, guard=guard
    )
    snapstart.reseed(sweeper.rng)
    return sweeper


def exporter(settings: ExportSettings, *, clock: Clock = utc_now) -> Exporter:
    """The export function's service: the images table's index and items, and S3, both used by every run."""
    return Exporter(
        storage(settings).queries,
        S3ExportObjects(aws_client("s3")),
        settings.export_location,
        clock=clock,
    )


def backfiller(settings: BackfillSettings, *, clock: Clock = utc_now) -> Backfiller:
    """The backfill function's service: the images table (reads), control items (markers, counters), the submit
    queue. Its spend guard reads the pause and the daily limit only (no credits floor: that is the submit
    function's, where images wait SUBMITTING), so it has no Ximilar client (nor a token to build one)."""
    store = storage(settings)
    sqs = aws_client("sqs")
    guard = SpendGuard(store.control, None, settings.daily_submit_limit, 0, clock)
    return Backfiller(
        store.images,
        store.control,
        SqsSubmitQueue(sqs, settings.submit_queue_url),
        sqs.meta.region_name or "us-east-1",
        guard,
        settings.max_queue_depth,
        functools.partial(allowed, input_bucket=settings.input_bucket, watched=settings.watched_buckets),
        clock=clock,
    )


def copy_transfer_config() -> TransferConfig:
    """Multipart uploads of a stream that hold at most COPY_CONCURRENCY parts in memory."""
    config = TransferConfig(
        multipart_threshold=PART_BYTES,
        multipart_chunksize=PART_BYTES,
        max_concurrency=COPY_CONCURRENCY,
        max_io_queue=COPY_CONCURRENCY,
    )
    # A stream is not seekable, so s3transfer reads parts ahead into memory: 10 of them unless told
    # (s3transfer's own setting, which boto3's TransferConfig inherits without taking it as an argument).
    config.max_in_memory_upload_chunks = COPY_CONCURRENCY
    return config


def output_copier(settings: OutputsSettings, *, clock: Clock = utc_now) -> OutputCopier:
    """The outputs function's service: streamed copies, and a submitter to regenerate expired artifacts,
    whose clients (the token, the signing key, presigning) are built when a regeneration first needs them."""
    events = completion_events(settings)
    store, _, _, submit = _submitting(settings, clock=clock, events=events, lazy={"secretsmanager", "ssm", "s3"})
    copier = S3ArtifactCopier(
        aws_client("s3", config=Config(signature_version="s3v4")),
        HttpSession(),
        copy_transfer_config(),
        timeout=(CONNECT_TIMEOUT_SECONDS, settings.ximilar_read_timeout_seconds),
    )
    return OutputCopier(
        store.images,
        copier,
        settings.output_location,
        submit,
        settings.regenerate_outputs_for,
        settings.outputs_max_receive_count,
        events=events,
        clock=clock,
    )
