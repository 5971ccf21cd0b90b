"""pynamodb models of the two tables, and the factory that binds them to real table names.

The schema classes below are never used directly: `bind_tables` subclasses them with a `Meta`
naming the deployed tables (pynamodb evaluates `Meta` at import time, and the names come from the
environment). The attribute and index names here are the ones users query; docs/data-model.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import botocore.session
from pynamodb.attributes import (
    BooleanAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection
from pynamodb.models import Model

from ximilar_async.adapters.dynamodb import writes


class ByRequestIndex(GlobalSecondaryIndex["ImageItem"]):
    """The answered images of one Ximilar request (sparse: an image gets its `request_id` with its result)."""

    class Meta:
        index_name = "by_request"
        projection = IncludeProjection(["status", "status_reason", "updated_at"])

    request_id = UnicodeAttribute(hash_key=True)
    image_uri = UnicodeAttribute(range_key=True)


class ByStatusIndex(GlobalSecondaryIndex["ImageItem"]):
    """Finished images (DONE, ERROR, FAILED) by status and time; `status_shard` is `<STATUS>#<nn>`, write-sharded.

    Sparse: an image in flight has no `status_shard`, so it enters the index once, when it finishes.
    """

    class Meta:
        index_name = "by_status"
        projection = IncludeProjection(["status", "status_reason", "request_id"])

    status_shard = UnicodeAttribute(hash_key=True)
    updated_at = UTCDateTimeAttribute(range_key=True)


class DueIndex(GlobalSecondaryIndex["RequestItem"]):
    """Requests whose next check is due: sparse, an item leaves it when it reaches a terminal status.

    Keys only: the sweeper reads each due request from the table anyway (consistently, before taking
    it), and an entry that projects nothing else costs one write unit however large the request item.
    """

    class Meta:
        index_name = "due"
        projection = KeysOnlyProjection()

    due_shard = UnicodeAttribute(hash_key=True)
    next_check_at = NumberAttribute(range_key=True)


class ImageItem(Model):
    """One uploaded object (the latest upload of its key) and its result."""

    class Meta:
        table_name = "unbound-images"  # replaced by bind_tables

    image_uri = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute()
    key = UnicodeAttribute()
    version = UnicodeAttribute()  # S3 version id, or ETag when the bucket is unversioned
    version_id = UnicodeAttribute(null=True)  # S3 version id in a versioned bucket
    sequencer = UnicodeAttribute()  # S3's event sequencer, right-padded: orders uploads of one key
    size_bytes = NumberAttribute(null=True)
    record_id = UnicodeAttribute()
    status = UnicodeAttribute()
    status_reason = UnicodeAttribute(null=True)
    status_shard = UnicodeAttribute(null=True)  # finished images only: the by_status index is sparse
    request_type = UnicodeAttribute(null=True)
    endpoint = UnicodeAttribute(null=True)
    submission_id = UnicodeAttribute(null=True)
    request_id = UnicodeAttribute(null=True)
    result = MapAttribute[str, Any](null=True)  # the record as Ximilar answered it
    result_s3_uri = UnicodeAttribute(null=True)  # where the record is when too large for an item
    outputs = MapAttribute[str, Any](null=True)  # name -> {uri, state, reason, size_bytes}: copies of Ximilar's files
    output_regenerations = NumberAttribute(null=True)  # resubmissions because an artifact expired before its copy
    attempts = NumberAttribute(default=0)  # submissions of this version to Ximilar
    lease_until = NumberAttribute(null=True)  # epoch seconds: a SUBMITTING claim is held until then
    created_at = UTCDateTimeAttribute()
    updated_at = UTCDateTimeAttribute()
    expires_at = TTLAttribute(null=True)
    write_id = UnicodeAttribute(null=True)  # the token of the last conditional write (`writes`)

    by_request = ByRequestIndex()
    by_status = ByStatusIndex()


class RequestItem(Model):
    """One Ximilar request as the pipeline sees it, keyed by the pipeline's own submission id.

    The item exists before the POST (status SUBMITTING), so a crash between the POST and the
    write still leaves a record of what was sent.
    """

    class Meta:
        table_name = "unbound-requests"  # replaced by bind_tables

    submission_id = UnicodeAttribute(hash_key=True)
    request_id = UnicodeAttribute(null=True)  # Ximilar's id, once it answered
    request_type = UnicodeAttribute()
    endpoint = UnicodeAttribute()
    status = UnicodeAttribute()
    ximilar_status = UnicodeAttribute(null=True)  # verbatim, may be a state the reference does not list
    status_reason = UnicodeAttribute(null=True)
    images = MapAttribute[str, Any]()  # record `_id` -> image URI
    checks = NumberAttribute(default=0)
    submit_attempts = NumberAttribute(default=0)
    held_back = BooleanAttribute(null=True)  # its last submission was not tried (throttled, out of time)
    retry_record_ids = UnicodeSetAttribute(null=True)  # images whose ERROR is worth another try
    incomplete_answers = NumberAttribute(default=0)  # DONE answers that left some images without a record
    sweep_failures = NumberAttribute(default=0)  # sweeps of this request that ended in an unexpected error
    due_shard = UnicodeAttribute(null=True)
    next_check_at = NumberAttribute(null=True)  # epoch seconds
    created_at = UTCDateTimeAttribute()
    # The age limit of a request held back by the spend guard counts from its last paused check, not
    # from created_at: time spent paused is not time Ximilar had it.
    age_from = UTCDateTimeAttribute(null=True)
    updated_at = UTCDateTimeAttribute()
    expires_at = TTLAttribute(null=True)
    write_id = UnicodeAttribute(null=True)  # the token of the last conditional write (`writes`)

    due = DueIndex()


class ControlItem(Model):
    """A few small items of the pipeline's own state, kept in the requests table under `control#...` keys.

    No second table to deploy, and none of these items ever enters the `due` index (no `due_shard`):
    - `control#pause`: submission paused by hand (`xasync pause`) until `xasync resume`;
    - `control#spend#<YYYY-MM-DD>`: images admitted for submission that UTC day (an atomic counter),
      and whether `xasync resume` lifted that day's limit;
    - `control#last-sweep`: what the last sweeper run did, for `xasync status`, and where its reading
      of the due index got to, where the next run starts (`entities.DueScan`);
    - `control#queued#<record id>`: a backfill sent this object version (its run, when), until the submit
      function's image item says so itself (kept MARKER_TTL, `control.py`);
    - `control#backfill#<run>`: a backfill run's counters; `control#backfill-runs`: the set of run names.
    """

    class Meta:
        table_name = "unbound-requests"  # replaced by bind_tables

    submission_id = UnicodeAttribute(hash_key=True)
    submitted = NumberAttribute(null=True)  # spend day: images admitted
    resumed = BooleanAttribute(null=True)  # spend day: the limit was lifted by hand
    reason = UnicodeAttribute(null=True)  # pause: why
    outcome = MapAttribute[str, Any](null=True)  # last sweep: its counts
    due_marks = MapAttribute[str, Any](null=True)  # last sweep: shard -> where its reading got to (DueScan)
    due_passed = MapAttribute[str, Any](null=True)  # last sweep: request -> check time, passed inside the margin
    due_full_from = MapAttribute[str, Any](null=True)  # last sweep: shard -> where the full pass under way resumes
    due_full_at = NumberAttribute(null=True)  # last sweep: when the last full pass of the due index began
    run = UnicodeAttribute(null=True)  # backfill marker and run: the run's name
    engine_id = UnicodeAttribute(null=True)  # backfill run: the execution ARN (or local:/laptop: name)
    source = UnicodeAttribute(null=True)  # backfill run: what it reads (s3:// prefix or manifest)
    started_at = UTCDateTimeAttribute(null=True)  # backfill run: its first batch
    total = NumberAttribute(null=True)  # backfill run: objects handed to it so far
    enqueued = NumberAttribute(null=True)  # backfill run: sent to the submit queue
    already_known = NumberAttribute(null=True)  # backfill run: an image item for that version existed
    already_queued = NumberAttribute(null=True)  # backfill run: another run's fresh marker existed
    failed = NumberAttribute(null=True)  # backfill run: unreadable, not allowed, or refused by SQS
    last_failure = UnicodeAttribute(null=True)  # backfill run: why the last failure failed
    runs = UnicodeSetAttribute(null=True)  # control#backfill-runs: every run's name
    updated_at = UTCDateTimeAttribute()
    expires_at = TTLAttribute(null=True)
    write_id = UnicodeAttribute(null=True)  # the token of the last conditional write (`writes`)


# The three models share one client, and so its connections: one per thread that may call at once (a
# submit pool of up to 32, the repository's 16 parallel index queries), where pynamodb's default is 10.
CONNECTIONS: Final = 48


@dataclass(frozen=True)
class Tables:
    images: type[ImageItem]
    requests: type[RequestItem]
    control: type[ControlItem]


def bind_tables(
    images_table: str,
    requests_table: str,
    *,
    host: str | None = None,
    region: str | None = None,
    session: botocore.session.Session | None = None,
) -> Tables:
    """Models bound to the named tables. `host` points pynamodb at another endpoint (moto);
    left None, botocore's own configuration applies (`AWS_ENDPOINT_URL` included).

    The three models share one client, made now from `session` (else a new botocore session): pynamodb
    would make one per model on first use, from a session of its own that loads botocore's data again.
    Their connections configure it alike (pynamodb's defaults, no extra headers). Every conditional
    write through it returns the item it failed on (`writes`).
    """

    def meta(table_name: str) -> type:
        attributes: dict[str, Any] = {"table_name": table_name, "host": host, "max_pool_connections": CONNECTIONS}
        if region is not None:
            attributes["region"] = region
        return type("Meta", (), attributes)

    images = type("BoundImageItem", (ImageItem,), {"Meta": meta(images_table), "__module__": __name__})
    requests = type("BoundRequestItem", (RequestItem,), {"Meta": meta(requests_table), "__module__": __name__})
    control = type("BoundControlItem", (ControlItem,), {"Meta": meta(requests_table), "__module__": __name__})
    session = session or botocore.session.get_session()
    bound: tuple[Any, ...] = (images, requests, control)
    shared: Any = None
    for model in bound:
        connection = model._get_connection().connection
        # pynamodb keeps its session per thread and makes one when it has none: this thread's is ours,
        # and the client made now (in this thread) is the one every thread uses.
        connection._local.session = session
        if shared is None:
            shared = connection.client  # the property makes the client
            for operation in ("PutItem", "UpdateItem", "DeleteItem"):
                shared.meta.events.register(
                    f"before-parameter-build.dynamodb.{operation}", writes.ask_for_the_item_on_condition_failure
                )
        else:
            connection._client = shared
    return Tables(images=images, requests=requests, control=control)
