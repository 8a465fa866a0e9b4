"""Time for sessions that run on the wall clock (conversation mode), replaceable by a clock a test controls."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when`` (yielding to the loop at least once, even when it is already)."""
        ...


class LoopClock:
    """The event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(when - self.now(), 0.0))
