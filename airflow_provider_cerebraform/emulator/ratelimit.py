"""Sliding-window rate limits: admitted while fewer than ``limit`` requests were admitted in the window."""

from __future__ import annotations

import math
from collections import deque


class SlidingWindow:
    """Admission times of one limit bucket. Not thread-safe: the caller holds the state lock.

    Only admitted requests are recorded, so requests refused with 429 never count.
    """

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def _prune(self, now: float, window: float) -> None:
        times = self._times
        while times and times[0] <= now - window:
            times.popleft()

    def try_admit(self, now: float, limit: int, window: float) -> float | None:
        """Record a request and return ``None``, or return the seconds until one would be admitted.

        :param now: the current time (monotonic seconds).
        :param limit: requests allowed in any window.
        :param window: window length in (real) seconds.
        """
        self._prune(now, window)
        times = self._times
        if len(times) < limit:
            times.append(now)
            return None
        # The request is admitted once all but limit-1 of the recorded ones left the window.
        return times[len(times) - limit] + window - now


def retry_after_seconds(wait: float) -> int:
    """Round a wait up to whole seconds, at least 1, as ``Retry-After`` requires.

    :param wait: seconds until a request would be admitted.
    """
    return max(1, math.ceil(wait - 1e-9))
