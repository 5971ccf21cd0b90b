"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records what it is sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


@dataclass
class Delivery:
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    answer_status: int = 200
    files: dict[str, bytes] = field(default_factory=dict)

    def host(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; returns its URL."""
        self.files[path] = data
        return self.url.rsplit("/", 1)[0] + path


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")
    lock = threading.Lock()

    @Request.application
    def app(request: Request) -> Response:
        if request.method == "GET":  # the receiver doubles as an image host for `_url` records
            found = receiver.files.get(request.path)
            return Response(found, mimetype="image/png") if found is not None else Response(status=404)
        with lock:
            receiver.deliveries.append(Delivery(dict(request.headers), json.loads(request.get_data() or b"null")))
        return Response("{}", status=receiver.answer_status, mimetype="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    receiver.url = f"http://127.0.0.1:{server.server_port}/webhook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
