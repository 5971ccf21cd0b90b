"""`xasync ui`: a local, read-only page of the results, before and after, for the local or a deployed stack.

Safe by default: it listens on 127.0.0.1 only and answers only to a Host of 127.0.0.1 or localhost (a
page elsewhere cannot rebind its name to it and read it), has GET routes only, and shows every value
through Jinja's autoescaping (keys and results are user data). Presigned GETs are made per render with
the credentials of whoever runs it and are never stored. Reads go through `adapters.dynamodb.queries`' index
queries, one page at a time, so the page costs the same with 10 or 10 million images.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from flask import Flask, Response, abort, jsonify, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.serving import make_server

from xasync import views
from ximilar_async.adapters.dynamodb.queries import ImagePage, PagePosition, ResultQueries
from ximilar_async.values import summaries
from ximilar_async.values.entities import Image, OutputState
from ximilar_async.values.request_types import RequestType
from ximilar_async.values.statuses import TERMINAL_STATUSES, Status
from ximilar_async.values.uploads import IMAGE_EXTENSIONS

PAGE_SIZE = 48
MAX_PAGE_SIZE = 200
# Images examined for one page when a filter the index cannot apply (the type) skips most of them.
TYPE_FILTER_BUDGET = 1000
SINCE_CHOICES = ("15m", "1h", "1d", "7d", "30d")
DEFAULT_SINCE = "1d"
LINK_SECONDS = 900  # presigned GETs live long enough to look, no longer
POLL_MILLISECONDS = 2000
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class PageSource:
    """What the page reads: the images table (through `adapters.dynamodb.queries`) and S3 (to presign GETs)."""

    queries: ResultQueries
    s3: Any  # a boto3 S3 client with the user's own credentials
    input_bucket: str

    def link(self, uri: str) -> str:
        """A presigned GET of `s3://bucket/key`; botocore encodes the key (spaces, `+`, any letter)."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=LINK_SECONDS
        )
        return url


@dataclass(frozen=True)
class Query:
    """The page's filters, as its URL carries them."""

    status: Status | None = None
    request_type: str | None = None
    prefix: str = ""
    since: str = DEFAULT_SINCE
    request_id: str | None = None
    cursor: str | None = None
    limit: int = PAGE_SIZE

    @classmethod
    def parse(cls, args: MultiDict[str, str]) -> Query:
        status = args.get("status") or None
        request_type = args.get("type") or None
        if status is not None and status not in Status.__members__:
            abort(400, f"unknown status: {status}")
        if request_type is not None and request_type not in {t.value for t in RequestType}:
            abort(400, f"unknown type: {request_type}")
        since = args.get("since") or DEFAULT_SINCE
        try:
            views.parse_since(since)
            limit = min(max(int(args.get("limit") or PAGE_SIZE), 1), MAX_PAGE_SIZE)
        except ValueError as error:
            abort(400, str(error))
        return cls(
            status=Status(status) if status else None,
            request_type=request_type,
            prefix=args.get("prefix", ""),
            since=since,
            request_id=args.get("request") or None,
            cursor=args.get("cursor") or None,
            limit=limit,
        )

    def args(self, **changes: str | None) -> dict[str, Any]:
        """The query string of this query (with `changes`), without empty values, for `url_for`."""
        values = {
            "status": self.status.value if self.status else None,
            "type": self.request_type,
            "prefix": self.prefix,
            "since": self.since if self.since != DEFAULT_SINCE else None,
            "request": self.request_id,
            "cursor": self.cursor,
            "limit": str(self.limit) if self.limit != PAGE_SIZE else None,
            **changes,
        }
        return {name: value for name, value in values.items() if value}

    @property
    def since_time(self) -> datetime:
        moment = views.parse_since(self.since)
        assert moment is not None  # parse() refused anything else
        return moment


def encode_cursor(position: PagePosition) -> str:
    text = json.dumps([position.updated_at.isoformat(), position.uri], ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> PagePosition:
    try:
        moment, uri = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return PagePosition(datetime.fromisoformat(moment), str(uri))
    except (ValueError, TypeError, binascii.Error) as error:
        abort(400, f"not a cursor of this page: {error}")


def find_page(source: PageSource, query: Query) -> ImagePage:
    """One page of images for `query`: by request (`by_request`), else by status and time (`by_status`)."""
    after = decode_cursor(query.cursor) if query.cursor else None
    if query.request_id:
        return source.queries.images_of_request_page(
            query.request_id, query.limit, after_uri=after.uri if after else None
        )
    return source.queries.images_page(
        [query.status] if query.status else list(Status),
        query.since_time,
        query.limit,
        after=after,
        uri_prefix=f"s3://{source.input_bucket}/{query.prefix}" if query.prefix else None,
        request_type=query.request_type,
        budget=TYPE_FILTER_BUDGET if query.request_type else query.limit,
    )


@dataclass(frozen=True)
class OutputView:
    """What the page shows beside the input: the first stored output, else the first output's state."""

    name: str
    state: OutputState
    url: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Card:
    image: Image
    item: dict[str, Any]
    summary: str
    input_url: str | None  # None when there is nothing a browser could show (not an image, empty)
    output: OutputView | None

    @property
    def finished(self) -> bool:
        return self.image.status in TERMINAL_STATUSES


def previewable(image: Image) -> bool:
    return image.size_bytes > 0 and PurePosixPath(image.key).suffix.lower() in IMAGE_EXTENSIONS


def output_view(source: PageSource, image: Image) -> OutputView | None:
    if not image.outputs:
        return None
    named = sorted(image.outputs.items())
    for name, output in named:
        if output.state is OutputState.STORED:
            return OutputView(name, output.state, url=source.link(output.uri))
    name, output = named[0]
    return OutputView(name, output.state, reason=output.reason)


def card(source: PageSource, image: Image) -> Card:
    item = views.as_item(image)
    return Card(
        image,
        item,
        summaries.summary(item),
        source.link(image.uri) if previewable(image) else None,
        output_view(source, image),
    )


def content_security_policy(source: PageSource) -> str:
    """Scripts and styles from this server only; images from S3 (the local endpoint or AWS over HTTPS)."""
    endpoint = str(source.s3.meta.endpoint_url)
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        f"img-src {endpoint} https:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def create_app(source: PageSource) -> Flask:
    app = Flask(__name__)  # templates/ and static/ beside this module
    # Werkzeug answers 400 to any other Host: a DNS-rebinding page cannot read this one.
    app.config["TRUSTED_HOSTS"] = [LOOPBACK, "localhost"]
    policy = content_security_policy(source)

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # presigned URLs must not leak to S3's logs
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def shown_everywhere() -> dict[str, Any]:
        return {"input_bucket": source.input_bucket}

    @app.get("/")
    def index() -> str:
        query = Query.parse(request.args)
        page = find_page(source, query)
        cards = [card(source, image) for image in page.images]
        return render_template(
            "ui/index.html",
            query=query,
            cards=cards,
            counts_url=url_for("counts_json", since=query.since),
            next_url=url_for("index", **query.args(cursor=encode_cursor(page.after))) if page.after else None,
            first_url=url_for("index", **query.args(cursor=None)) if query.cursor else None,
            poll_url=url_for("page_json", **query.args()),
            poll_ms=POLL_MILLISECONDS,
            statuses=[status.value for status in Status],
            types=[request_type.value for request_type in RequestType],
            since_choices=SINCE_CHOICES if query.since in SINCE_CHOICES else (*SINCE_CHOICES, query.since),
        )

    @app.get("/api/images")
    def page_json() -> Response:
        """The page's images and statuses, which the page polls while any of them is unfinished."""
        query = Query.parse(request.args)
        page = find_page(source, query)
        images = [
            {"uri": image.uri, "key": image.key, "status": image.status.value, "summary": summaries.summary(item)}
            for image in page.images
            for item in [views.as_item(image)]
        ]
        return jsonify(images=images, next=encode_cursor(page.after) if page.after else None)

    @app.get("/api/counts")
    def counts_json() -> Response:
        """Images per status since the page's time. Fetched after the grid is shown: COUNT queries read
        every index item of the window, so on a large table they take longer than the page itself."""
        since = Query.parse(request.args).since_time
        return jsonify({status.value: count for status, count in source.queries.count_by_status(since).items()})

    @app.get("/image")
    def detail() -> str:
        uri = request.args.get("uri", "")
        image = source.queries.image(uri) if uri.startswith("s3://") else None
        if image is None:
            abort(404, "no such image")
        shown = card(source, image)
        links = {"input object": source.link(image.uri)}
        if image.result_s3_uri:
            links["stored result"] = source.link(image.result_s3_uri)
        for name, output in sorted(image.outputs.items()):
            if output.state is OutputState.STORED:
                links[f"output: {name}"] = source.link(output.uri)
        return render_template(
            "ui/detail.html",
            card=shown,
            links=links,
            document=json.dumps(shown.item, default=str, indent=2, ensure_ascii=False, sort_keys=True),
        )

    return app


@contextmanager
def serving(app: Flask, port: int = 0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 from a thread; yields the page's URL; stops the server by its own handle."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per thumbnail poll is noise
    server = make_server(LOOPBACK, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="xasync-ui", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
