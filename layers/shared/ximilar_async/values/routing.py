"""Which Ximilar request an uploaded object becomes, by its key prefix.

The table is written `prefix=type:endpoint` with `;` between routes, e.g.
`incoming/=upscaler:upscale_2x;cards/=card-grader:grade`. The longest matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ximilar_async.values.request_types import DOCUMENTED_ENDPOINTS, RequestType, parse_request_type


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    request_type: RequestType
    endpoint: str


def parse_routes(table: str) -> tuple[Route, ...]:
    """Parse a routing table; ValueError names the route that is wrong."""
    routes: list[Route] = []
    for entry in filter(None, (part.strip() for part in table.split(";"))):
        prefix, sep, target = entry.partition("=")
        type_name, colon, endpoint = target.partition(":")
        if not sep or not colon or not endpoint.strip():
            raise ValueError(f"route {entry!r} is not of the form prefix=type:endpoint")
        request_type = parse_request_type(type_name.strip())
        endpoint = endpoint.strip()
        documented = DOCUMENTED_ENDPOINTS.get(request_type)
        if documented is not None and endpoint not in documented:
            raise ValueError(f"route {entry!r}: {request_type.value} has no endpoint {endpoint!r}")
        routes.append(Route(prefix.strip(), request_type, endpoint))
    if not routes:
        raise ValueError("the routing table has no routes")
    prefixes = [route.prefix for route in routes]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError("the routing table names a prefix twice")
    return tuple(sorted(routes, key=lambda route: len(route.prefix), reverse=True))


def route_for(key: str, routes: Sequence[Route]) -> Route | None:
    """The route of the longest prefix of `key`, or None (routes come sorted by `parse_routes`)."""
    return next((route for route in routes if key.startswith(route.prefix)), None)
