"""The end of a cold start: what it built is frozen out of the collector's way, and collection is on."""

from __future__ import annotations

import gc

from ximilar_async import runtime


def test_a_cold_start_ends_with_what_it_built_frozen_and_collection_on() -> None:
    gc.disable()  # as a handler does before its imports
    try:
        frozen_before = gc.get_freeze_count()
        with runtime.cold_start():
            assert not gc.isenabled()
            built = [[n] for n in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(built)
    finally:
        gc.unfreeze()
        gc.enable()
