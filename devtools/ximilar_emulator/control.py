"""A client of the emulator's control endpoints, for tests and scripts."""

from __future__ import annotations

from typing import Any

import requests


class EmulatorControl:
    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.session.request(method, f"{self.base_url}/_emulator/{path}", timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json()

    def knobs(self) -> dict[str, Any]:
        return dict(self._call("GET", "knobs"))

    def set_knobs(self, **changes: Any) -> dict[str, Any]:
        return dict(self._call("PATCH", "knobs", json=changes))

    def fail_next(self, count: int, status: int = 500, retry_after: float | None = None) -> None:
        """The next `count` API calls answer `status` (with Retry-After when given)."""
        self._call("POST", "faults", json={"status": status, "count": count, "retry_after": retry_after})

    def clear_faults(self) -> None:
        """Drop the faults still queued (a storm ends)."""
        self._call("DELETE", "faults")

    def calls(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "calls"))

    def most_in_flight(self) -> int:
        """The most API calls the emulator was answering at one moment."""
        edges = sorted(
            [(call["started"], 1) for call in self.calls()] + [(call["at"], -1) for call in self.calls()],
            key=lambda edge: (edge[0], edge[1]),  # an answer before an arrival at the same instant
        )
        most = current = 0
        for _, step in edges:
            current += step
            most = max(most, current)
        return most

    def webhooks(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "webhooks"))

    def reset(self) -> None:
        self._call("POST", "reset")
