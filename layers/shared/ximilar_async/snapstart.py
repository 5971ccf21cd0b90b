"""Lambda SnapStart (the template's `SnapStart` parameter): what a restored snapshot must not share.

With SnapStart, a function's cold start (the handler module's import: settings, clients, services) runs
once, when a version is published; every new execution environment resumes from that snapshot. What
the import leaves in memory is then the same in all of them:
- random number generators: `random`'s global state (botocore's retry jitter, the schedule's jitter)
  and the sweeper's own `random.Random` would draw the same numbers in every restored environment, so
  they are seeded again after a restore. `uuid.uuid4`, `secrets` and `hmac` keys read `os.urandom`,
  which is not in the snapshot: submission ids and signing stay unique without a hook;
- caches with a time to live (the Ximilar token, the webhook signing keys): the import reads none, but
  they are emptied after a restore anyway, so nothing read before a snapshot outlives its `max_age`;
- connections and credentials: the import makes no call, so no connection is open in the snapshot;
  credentials are botocore's to refresh (Lambda gives SnapStart functions theirs through the container
  credentials endpoint, not through the snapshot).

The hooks go through `snapshot_restore_py`, which Lambda's Python runtimes include; elsewhere (the
tests, the local stack) nothing is ever restored, and `restored()` runs the hooks for a test.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

_HOOKS: list[Callable[[], Any]] = []


def _runtime_registration() -> Callable[[Callable[[], Any]], Any] | None:
    try:
        from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]
    except ImportError:  # not in a Lambda runtime
        return None
    registration: Callable[[Callable[[], Any]], Any] = register_after_restore
    return registration


_REGISTER = _runtime_registration()


def after_restore(hook: Callable[[], Any]) -> None:
    """Run `hook` (no arguments) whenever this environment resumes from a snapshot."""
    _HOOKS.append(hook)
    if _REGISTER is not None:
        _REGISTER(hook)


def reseed(rng: random.Random) -> None:
    """A generator made at cold start draws its own numbers in each restored environment."""
    after_restore(rng.seed)


def restored() -> None:
    """What Lambda does after a restore: every hook, in the order registered (for tests)."""
    for hook in list(_HOOKS):
        hook()


# `random`'s global generator: botocore's retry jitter, schedule.next_check_delay without an rng.
after_restore(random.seed)
