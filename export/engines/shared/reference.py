"""What the engines' offline whole-clip references (``export.engines.<engine>.reference``) share."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def batches(count: int, size: int) -> Iterator[np.ndarray]:
    """The indices ``0 … count − 1`` in consecutive runs of at most ``size``."""
    for first in range(0, count, size):
        yield np.arange(first, min(first + size, count))
