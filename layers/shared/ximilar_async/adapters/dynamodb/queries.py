"""The read side for people: result pages, counts, images in flight, failure reasons.

The CLI (`xasync results`, `status`, `reconcile`, `export`), the results page, the benchmarks and the export
function read here; the pipeline's own functions do not (their reads are in `images`, `requests` and
`control`). Reads are eventually consistent where a moment's lag only shows a status a moment late, and
every query is bounded by the index it reads: a page costs about `limit` index items per shard, whatever
the table holds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Final, TypeVar

from ximilar_async.adapters.dynamodb import keys
from ximilar_async.adapters.dynamodb.control import ControlStore
from ximilar_async.adapters.dynamodb.images import ImageStore
from ximilar_async.adapters.dynamodb.mapping import EPOCH, as_known, to_request, waiting_images
from ximilar_async.adapters.dynamodb.models import Tables
from ximilar_async.values.entities import Image, TrackedRequest
from ximilar_async.values.statuses import TERMINAL_STATUSES, UNFINISHED, Status

PARALLEL_QUERIES: Final = 16  # index queries of one page read in flight at once
T = TypeVar("T")


@dataclass(frozen=True)
class ResultQueries:
    tables: Tables
    shards: int

    @cached_property
    def _images(self) -> ImageStore:
        return ImageStore(self.tables, self.shards)

    @cached_property
    def _control(self) -> ControlStore:
        return ControlStore(self.tables, self.shards)

    def image(self, uri: str) -> Image | None:
        return self._images.image(uri)

    def images_by_uri(self, uris: Iterable[str], *, consistent: bool = True) -> dict[str, Image]:
        return self._images.images_by_uri(uris, consistent=consistent)

    def finished_between(
        self, start: datetime | None, end: datetime | None, *, workers: int = PARALLEL_QUERIES
    ) -> list[tuple[str, datetime]]:
        """(uri, updated_at) of every finished image updated in [start, end) (None: unbounded), from
        every shard of `by_status`, `workers` queries at once (the export)."""
        images = self.tables.images
        shards = [
            shard for status in sorted(TERMINAL_STATUSES) for shard in keys.all_status_shards(status, self.shards)
        ]

        def query(shard: str) -> list[tuple[str, datetime]]:
            condition: Any = None
            if start is not None and end is not None:
                condition = images.updated_at.between(start, end - timedelta(microseconds=1))
            elif start is not None:
                condition = images.updated_at >= start
            return [(item.image_uri, item.updated_at) for item in images.by_status.query(shard, condition)]

        with ThreadPoolExecutor(max_workers=min(workers, len(shards))) as pool:
            return [entry for found in pool.map(query, shards) for entry in found]

    def image_uris_of_request(self, request_id: str) -> list[str]:
        """Every image of one Ximilar request: those answered (`by_request`), else those still in flight."""
        return list(self.image_statuses_of_request(request_id))

    # --- images in flight: the unfinished requests' images (they are in no status index) ----------------
    def in_flight_images(self) -> list[Image]:
        """The images of every unfinished request (the `due` index), each with its request's status.

        An image item stays SUBMITTING from its claim to its result; while Ximilar has it, its request
        says CREATED or PROCESSING, and that is the status shown here. An image claimed a moment ago
        whose request item is not written yet is not among them. O(images in flight), for the CLI and
        the page, never for the pipeline.
        """
        return [
            as_known(image, request)
            for request, waiting in self._due_with_waiting_images()
            if not request.status.is_terminal
            for image in waiting
        ]

    def _due_with_waiting_images(self) -> list[tuple[TrackedRequest, list[Image]]]:
        """Each request on the `due` index from the sweeper's marks, with its images that wait for it.

        Entries before the marks were all handled (`DueScan`); those after may be finished too (the
        webhook recorded their images and left them there), and then none of their images waits.
        """
        requests = self.tables.requests
        scan = self._control.due_scan()
        ids = [
            entry.submission_id
            for shard in range(self.shards)
            for entry in requests.due.query(keys.due_partition(shard), requests.next_check_at >= scan.start_of(shard))
            if scan.passed_before.get(entry.submission_id) != int(entry.next_check_at)  # done with: finished
        ]
        found_requests = [to_request(item) for item in requests.batch_get(ids)] if ids else []
        due = [request for request in found_requests if request.next_check_at is not None]
        found = self.images_by_uri({uri for request in due for uri in request.images.values()}, consistent=False)
        return [(request, list(waiting_images(request, found, request.images).values())) for request in due]

    def images_as_known(self, uris: Iterable[str]) -> dict[str, Image]:
        """`images_by_uri` (eventually consistent), each image in flight with its request's status and id."""
        found = self.images_by_uri(uris, consistent=False)
        flying = {image.submission_id for image in found.values() if image.status is Status.SUBMITTING}
        wanted = [submission_id for submission_id in flying if submission_id]
        requests = {item.submission_id: to_request(item) for item in self.tables.requests.batch_get(wanted)}
        return {
            uri: as_known(image, request) if (request := requests.get(image.submission_id or "")) else image
            for uri, image in found.items()
        }

    def _in_flight(self, statuses: Iterable[Status]) -> list[Image]:
        wanted = set(statuses) & set(UNFINISHED)
        return [image for image in self.in_flight_images() if image.status in wanted] if wanted else []

    def image_uris_by_status(self, statuses: Iterable[Status], since: datetime) -> list[str]:
        """Images in `statuses`: finished ones changed since `since` (every shard of `by_status`), and
        every image in flight in an unfinished status."""
        images = self.tables.images
        statuses = list(statuses)
        return [
            item.image_uri
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
            for item in images.by_status.query(shard, images.updated_at >= since)
        ] + [image.uri for image in self._in_flight(statuses)]

    # --- pages of images (the results page) ---------------------------------------------------------
    def count_by_status(self, since: datetime, statuses: Iterable[Status] = tuple(Status)) -> dict[Status, int]:
        """How many images of each status: finished ones changed since `since` (a COUNT query per
        `by_status` shard: it still reads the index items, but no item leaves DynamoDB), and every
        image in flight in an unfinished status.
        """
        images = self.tables.images
        statuses = list(statuses)
        in_flight = Counter(image.status for image in self._in_flight(statuses))
        shards = [
            (status, shard)
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
        ]
        with ThreadPoolExecutor(max_workers=min(len(shards), PARALLEL_QUERIES) or 1) as pool:
            counted = pool.map(lambda pair: images.by_status.count(pair[1], images.updated_at >= since), shards)
            counts = {status: in_flight[status] for status in dict.fromkeys(statuses)}
            for (status, _), count in zip(shards, counted, strict=True):
                counts[status] += count
        return counts

    def _by_status_newest_first(
        self, shard: str, since: datetime, after: PagePosition | None, uri_prefix: str | None, page_size: int
    ) -> Iterator[tuple[datetime, str]]:
        """(updated_at, uri) of one `by_status` shard, newest first, strictly after `after` in page order."""
        images = self.tables.images
        if after is not None and after.updated_at < since:
            return
        condition = images.updated_at >= since if after is None else images.updated_at.between(since, after.updated_at)
        # image_uri is the table's key, so every index holds it and a prefix filter needs no base-table read.
        prefix = images.image_uri.startswith(uri_prefix) if uri_prefix else None
        items = images.by_status.query(
            shard, condition, filter_condition=prefix, scan_index_forward=False, page_size=page_size
        )
        # Equal times have no order in the index: sort each run of them by URI, so that a position names
        # one place in the page order and the next page starts exactly after it.
        for _, tied in itertools.groupby(items, key=lambda item: item.updated_at):
            for position in sorted(((item.updated_at, item.image_uri) for item in tied), reverse=True):
                if after is None or position < (after.updated_at, after.uri):
                    yield position

    def images_page(
        self,
        statuses: Iterable[Status],
        since: datetime,
        limit: int,
        *,
        after: PagePosition | None = None,
        uri_prefix: str | None = None,
        request_type: str | None = None,
        budget: int = 1000,
    ) -> ImagePage:
        """The newest images in `statuses` changed since `since`, `limit` at most, after `after`.

        Every shard of every status is read newest first, lazily, `limit` items a page, and merged, so a
        page costs about `limit` index items per shard whatever the table holds. `request_type` is not
        in the index: it filters the fetched images, and at most `budget` index items are examined
        for one page (the page may then be short; `after` of the answer continues the search).
        Images in flight (no status index holds them) come from `in_flight_images`, merged in by time.
        """
        page_size = max(1, min(limit, 100))
        statuses = list(dict.fromkeys(statuses))
        shards = [
            self._by_status_newest_first(shard, since, after, uri_prefix, page_size)
            for status in statuses
            if status.is_terminal
            for shard in keys.all_status_shards(status, self.shards)
        ]
        in_flight = {
            image.uri: image
            for image in self._in_flight(statuses)
            if image.updated_at >= since
            and (uri_prefix is None or image.uri.startswith(uri_prefix))
            and (after is None or (image.updated_at, image.uri) < (after.updated_at, after.uri))
        }
        flying = sorted(((image.updated_at, image.uri) for image in in_flight.values()), reverse=True)
        merged = heapq.merge(iter(flying), *_first_pages_at_once(shards), reverse=True)
        found: list[Image] = []
        examined = 0
        last: tuple[datetime, str] | None = None
        seen: set[str] = set()
        while len(found) < limit and examined < budget:
            chunk = list(itertools.islice(merged, min(limit - len(found), budget - examined)))
            if not chunk:
                return ImagePage(found, None)
            examined += len(chunk)
            by_uri = self.images_by_uri([uri for _, uri in chunk if uri not in in_flight], consistent=False)
            by_uri.update(in_flight)
            for position in chunk:
                last = position
                image = by_uri.get(position[1])
                # The index is eventually consistent: an image that just changed status may show up in
                # two shards for a moment; it is shown once.
                if image is None or image.uri in seen or (request_type and image.request_type != request_type):
                    continue
                seen.add(image.uri)
                found.append(image)
        more = last is not None and next(merged, None) is not None
        return ImagePage(found, PagePosition(*last) if more and last else None)

    def images_of_request_page(self, request_id: str, limit: int, *, after_uri: str | None = None) -> ImagePage:
        """One page of the images of a Ximilar request (the `by_request` index), in URI order.

        The index orders by URI, so only the `uri` of the answer's `after` counts here.
        """
        images = self.tables.images
        condition = images.image_uri > after_uri if after_uri else None
        uris = [item.image_uri for item in images.by_request.query(request_id, condition, limit=limit + 1)]
        if not uris and after_uri is None:
            flying = sorted(self._in_flight_of_request(request_id).items())
            return ImagePage([image for _, image in flying[:limit]], None)
        by_uri = self.images_by_uri(uris[:limit], consistent=False)
        found = [by_uri[uri] for uri in uris[:limit] if uri in by_uri]
        if len(uris) <= limit:
            return ImagePage(found, None)
        last = by_uri.get(uris[limit - 1])
        return ImagePage(found, PagePosition(last.updated_at if last else EPOCH, uris[limit - 1]))

    def status_reasons(self, statuses: Iterable[Status], since: datetime) -> Counter[str]:
        """The `status_reason`s of images in `statuses` since `since` (projected in `by_status`), counted."""
        images = self.tables.images
        return Counter(
            str(item.status_reason or "(no reason)")
            for status in statuses
            for shard in keys.all_status_shards(status, self.shards)
            for item in images.by_status.query(shard, images.updated_at >= since)
        )

    def oldest_in_flight(self) -> Image | None:
        """The image in flight uploaded longest ago (see `in_flight_images`)."""
        return min(self.in_flight_images(), key=lambda image: image.created_at, default=None)

    def unfinished_requests(self) -> list[TrackedRequest]:
        """Every request not finished (some image waits for it), or DONE with images to retry."""
        return [request for request, waiting in self._due_with_waiting_images() if waiting or request.retry_record_ids]

    def image_statuses_of_request(self, request_id: str) -> dict[str, Status]:
        """Image URI -> status of every image of this Ximilar request: those answered carry its id (the
        `by_request` index); before any answer, the request's images in flight."""
        answered = {item.image_uri: Status(item.status) for item in self.tables.images.by_request.query(request_id)}
        if answered:
            return answered
        return {uri: image.status for uri, image in self._in_flight_of_request(request_id).items()}

    def _in_flight_of_request(self, request_id: str) -> dict[str, Image]:
        return {image.uri: image for image in self.in_flight_images() if image.request_id == request_id}


_END: Final = object()


def _first_pages_at_once(shards: list[Iterator[T]]) -> list[Iterator[T]]:
    """The shards' iterators with their first item (so their first page) read concurrently.

    A page reads every shard of every status (48 queries with 8 shards); one after the other, their
    round trips add up to most of the page's time.
    """
    with ThreadPoolExecutor(max_workers=min(len(shards), PARALLEL_QUERIES) or 1) as pool:
        heads = list(pool.map(lambda shard: next(shard, _END), shards))
    return [itertools.chain([head], shard) for head, shard in zip(heads, shards, strict=True) if head is not _END]  # type: ignore[list-item]


@dataclass(frozen=True, order=True)
class PagePosition:
    """Where a page of images ended (its last image's time and URI): the next page starts after it."""

    updated_at: datetime
    uri: str


@dataclass(frozen=True)
class ImagePage:
    images: list[Image]
    after: PagePosition | None  # None: there is nothing after this page
