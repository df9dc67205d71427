"""Charts for materialization metadata: PNG bytes from matplotlib, drawn off screen.

Matplotlib is imported only when a chart is drawn (it costs a second at import), with the Agg
backend so that no display is needed; each figure is closed once saved, since pyplot keeps
every open figure alive.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def figure(**subplots: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(pyplot, figure, axes) of `plt.subplots(**subplots)`; the figure is closed after."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawn, axes = plt.subplots(**subplots)
    try:
        yield plt, drawn, axes
    finally:
        plt.close(drawn)


def png(drawn: Any, **savefig: Any) -> bytes:
    buffer = io.BytesIO()
    drawn.savefig(buffer, format="png", **savefig)
    return buffer.getvalue()
