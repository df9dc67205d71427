"""Pausing Python's cyclic garbage collector around bulk work that allocates millions of
objects none of which form cycles (Kafka messages of a batch, the dicts of a large graph):
each full collection would otherwise rescan all of them again and again."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
