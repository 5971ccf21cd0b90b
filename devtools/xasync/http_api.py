"""An HTTP API (payload format 2.0) on 127.0.0.1 that calls Lambda handlers, as API Gateway would.

Routes come from the functions' `HttpApi` events in template.yaml; a request that matches none gets
API Gateway's own 404. Each request becomes an APIGatewayProxyEventV2 and the handler's answer
becomes the HTTP response.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
TEXT_TYPES = ("application/json", "text/", "application/xml", "application/x-www-form-urlencoded")


def http_api_event(request: Request, route_key: str) -> dict[str, Any]:
    """The payload 2.0 event API Gateway's HTTP API sends for `request`."""
    body = request.get_data()
    content_type = request.headers.get("Content-Type", "")
    is_text = not body or content_type.startswith(TEXT_TYPES)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.path,
        "rawQueryString": request.query_string.decode(),
        "headers": headers,
        "queryStringParameters": {k: ",".join(v) for k, v in request.args.lists()} or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": request.host,
            "domainPrefix": "local",
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": "HTTP/1.1",
                "sourceIp": request.remote_addr or "127.0.0.1",
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": body.decode() if is_text else base64.b64encode(body).decode(),
        "isBase64Encoded": not is_text,
    }


def http_response(answer: Mapping[str, Any]) -> Response:
    body = answer.get("body") or ""
    data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    response = Response(data, status=int(answer.get("statusCode", 200)))
    for name, value in (answer.get("headers") or {}).items():
        response.headers[name] = str(value)
    for cookie in answer.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    return response


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    context_factory: Callable[[], Any]


class LocalHttpApi:
    """`start()` serves the routes on a free port of 127.0.0.1; `url` is its base; `stop()` ends it."""

    def __init__(self, routes: list[Route], host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes = {(route.method.upper(), route.path): route for route in routes}
        self._lock = threading.Lock()  # one invocation at a time, like one warm Lambda instance
        self._server: BaseWSGIServer = make_server(host, port, Request.application(self._answer), threaded=True)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-http-api", daemon=True)

    def _answer(self, request: Request) -> Response:
        route = self.routes.get((request.method, request.path))
        if route is None:
            return Response('{"message":"Not Found"}', status=404, mimetype="application/json")
        event = http_api_event(request, f"{route.method} {route.path}")
        with self._lock:
            answer = route.handler(event, route.context_factory())
        return http_response(answer)

    def start(self) -> LocalHttpApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
        self._server.server_close()
