"""Klaviyo's rate limits: fixed burst (1 s) and steady (60 s) windows, plus daily caps where set.

Buckets are keyed by who is calling (an account for private keys; an account *and* OAuth app for
bearer tokens, as Klaviyo counts them) and by the limit's tier, so every endpoint of one tier
shares a quota. The stricter limits of ``additional-fields`` are separate buckets counted *in
addition*. A request is admitted only if every window of every bucket it touches has room; only
admitted requests are counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from klaviyo_sandbox.spec import RateLimit

_WINDOWS = ((1, "burst"), (60, "steady"), (86400, "daily"))


@dataclass(frozen=True)
class Decision:
    """The limiter's answer: admitted or not, and the ``RateLimit-*``/``Retry-After`` values."""

    allowed: bool
    headers: dict[str, str]


class RateLimiter:
    """Fixed-window counters for many buckets.

    ``scale`` multiplies every limit (``--rate-limits x10``); ``enabled=False`` admits everything
    and sends no rate-limit headers (``--rate-limits off``).
    """

    def __init__(self, *, enabled: bool = True, scale: float = 1.0, clock: Callable[[], float] = time.time):
        self.enabled = enabled
        self.scale = scale
        self._clock = clock
        # (bucket, window seconds) -> (window start, count)
        self._counts: dict[tuple[str, int], tuple[int, int]] = {}

    def _limits(self, limit: RateLimit) -> list[tuple[int, int]]:
        values = [(1, limit.burst), (60, limit.steady)]
        if limit.daily:
            values.append((86400, limit.daily))
        return [(window, max(1, math.floor(count * self.scale))) for window, count in values]

    def check(self, buckets: Sequence[tuple[str, RateLimit]]) -> Decision:
        """Admit (and count) one request against every ``(bucket key, limit)`` given.

        The first bucket is the endpoint's own; its figures go into the ``RateLimit-*`` headers.
        """
        if not self.enabled:
            return Decision(True, {})
        now = self._clock()
        retry_after = 0.0
        for key, limit in buckets:
            for window, allowed in self._limits(limit):
                start = int(now // window) * window
                seen_start, count = self._counts.get((f"{key}|{limit.tier}", window), (start, 0))
                if seen_start == start and count >= allowed:
                    retry_after = max(retry_after, start + window - now)
        if retry_after > 0:
            return Decision(False, {"Retry-After": str(max(1, math.ceil(retry_after)))})

        header_parts: list[str] = []
        # The binding window (closest to exhaustion; on a tie the one that resets last) names the
        # first number of RateLimit-Limit, and RateLimit-Remaining/Reset describe that same window.
        binding: tuple[int, int, int] | None = None  # (remaining, -reset, allowed)
        for index, (key, limit) in enumerate(buckets):
            for window, allowed in self._limits(limit):
                start = int(now // window) * window
                bucket = (f"{key}|{limit.tier}", window)
                seen_start, count = self._counts.get(bucket, (start, 0))
                count = count + 1 if seen_start == start else 1
                self._counts[bucket] = (start, count)
                if index == 0:
                    header_parts.append(f"{allowed};w={window}")
                    remaining = max(0, allowed - count)
                    left = start + window - now
                    # Whole seconds until the window resets: rounded down while requests remain
                    # (Klaviyo sends 0 within the current second), up once exhausted, so a client
                    # waiting that long is admitted.
                    reset = math.ceil(left) if remaining == 0 else math.floor(left)
                    candidate = (remaining, -reset, allowed)
                    if binding is None or candidate[:2] < binding[:2]:
                        binding = candidate
        assert binding is not None
        return Decision(
            True,
            {
                # IETF-draft style as Klaviyo sends it: "75, 75;w=1, 750;w=60".
                "RateLimit-Limit": ", ".join([str(binding[2]), *header_parts]),
                "RateLimit-Remaining": str(binding[0]),
                "RateLimit-Reset": str(-binding[1]),
            },
        )

    def reset(self) -> None:
        """Forget every counter (control API)."""
        self._counts.clear()


def parse_mode(mode: str) -> RateLimiter:
    """``klaviyo`` → Klaviyo's limits; ``off`` → none; ``xN`` → every limit times N."""
    if mode == "klaviyo":
        return RateLimiter()
    if mode == "off":
        return RateLimiter(enabled=False)
    if mode.startswith("x"):
        try:
            scale = float(mode[1:])
        except ValueError:
            scale = 0
        if scale > 0:
            return RateLimiter(scale=scale)
    raise ValueError(f"--rate-limits must be 'klaviyo', 'off' or 'xN' (N > 0), not {mode!r}")
