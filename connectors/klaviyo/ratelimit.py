"""Klaviyo's rate limits, kept on our side so that a 429 is rare rather than the steering mechanism.

Klaviyo counts requests in two *fixed* windows at once, aligned to the clock: a burst window of one
second and a steady window of sixty seconds. Every endpoint of one tier shares one quota per
account (per account *and* OAuth app for bearer tokens); some query parameters
(``additional-fields[segment]=profile_count``…) have a stricter quota counted in addition.

:class:`LimiterRegistry` holds one :class:`WindowLimiter` per ``(limiter key, tier)`` for the whole
process, so every client of one account shares one quota. A request asks the registry for a
:class:`Permit`; the registry books the earliest instant at which every window of every bucket the
request touches still has room (first come, first served: the booking order is the call order) and
sleeps until then. Booking ahead is what makes the schedule greedy and therefore optimal for fixed
windows: the whole minute's quota goes out at the burst rate, then requests wait for the next minute.

The limiter learns from the server: ``RateLimit-Limit: 750, 750;w=1, 7500;w=60`` replaces the
configured tier (a sandbox run with ``--rate-limits x10``, or a tier Klaviyo changed);
``RateLimit-Remaining``/``RateLimit-Reset`` raise our counts when the server has seen more than we
booked (another process using the same account); a 429's ``Retry-After`` pauses the bucket. Until
a bucket has heard from the server once, one request goes alone as a probe, so a server with lower
limits than our table is learned before a burst is sent at the table's rate.

Nothing here holds an event-loop-bound primitive, so one registry serves any number of event loops
(one after another) in a process.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = [
    "EXTRA_TIERS",
    "TIERS",
    "LimiterRegistry",
    "Permit",
    "SystemClock",
    "Tier",
    "WindowLimiter",
    "binding_window",
    "default_registry",
    "parse_rate_limit_header",
    "parse_retry_after",
]

BURST_WINDOW = 1
STEADY_WINDOW = 60
_WINDOWS = (BURST_WINDOW, STEADY_WINDOW)
_LIMIT_ITEM = re.compile(r"(\d+)\s*;\s*w\s*=\s*(\d+)")
_FIRST_NUMBER = re.compile(r"\s*(\d+)\s*(?:,|$)")


@dataclass(frozen=True)
class Tier:
    """A quota: ``burst`` requests per 1 s window and ``steady`` per 60 s window.

    ``name`` identifies the quota at Klaviyo: a tier letter (``"L"``) for an endpoint's own quota,
    or the query parameter (``"additional-fields[segment]=profile_count"``) for a stricter extra one.
    """

    name: str
    burst: int
    steady: int


# Klaviyo's published tiers (reference §4; the spec and live headers say L is 750/m, not 700/m).
TIERS: dict[str, Tier] = {
    "XS": Tier("XS", 1, 15),
    "S": Tier("S", 3, 60),
    "M": Tier("M", 10, 150),
    "L": Tier("L", 75, 750),
    "XL": Tier("XL", 350, 3500),
}


# The stricter quotas of some query parameters, counted in addition to the endpoint's tier.
EXTRA_TIERS: dict[str, Tier] = {
    name: Tier(name, burst, steady)
    for name, burst, steady in (
        ("additional-fields[list]=profile_count", 1, 15),
        ("additional-fields[segment]=profile_count", 1, 15),
        ("additional-fields[profile]=predictive_analytics", 10, 150),
        ("include=list", 1, 15),
        ("include=segment", 1, 15),
    )
}


class Clock:
    """Where the limiter reads the time (epoch seconds, as the server aligns its windows) and sleeps."""

    def now(self) -> float:  # pragma: no cover - interface
        """Seconds since the epoch."""
        raise NotImplementedError

    def sleep(self, seconds: float) -> Awaitable[None]:  # pragma: no cover - interface
        """Wait ``seconds``."""
        raise NotImplementedError


class SystemClock(Clock):
    """Wall-clock time (Klaviyo's windows are aligned to it) and ``asyncio.sleep``."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    def sleep(self, seconds: float) -> Awaitable[None]:
        """``asyncio.sleep(seconds)``."""
        return asyncio.sleep(seconds)


def parse_rate_limit_header(value: str | None) -> dict[int, int]:
    """``"75, 75;w=1, 750;w=60"`` → ``{1: 75, 60: 750}`` (window seconds → limit); ``{}`` if unreadable."""
    if not value:
        return {}
    return {int(window): int(limit) for limit, window in _LIMIT_ITEM.findall(value) if int(window) > 0}


def binding_window(value: str | None, limits: Mapping[int, int]) -> int | None:
    """Which window ``RateLimit-Remaining`` speaks of: the one whose limit ``RateLimit-Limit`` names first.

    ``"150, 10;w=1, 150;w=60"`` → 60. None when the first number is missing or matches no single window.
    """
    first = _FIRST_NUMBER.match(value or "")
    if not first:
        return None
    matching = [window for window, limit in limits.items() if limit == int(first.group(1))]
    return matching[0] if len(matching) == 1 else None


def parse_retry_after(value: str | None, now: float, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return default


@dataclass
class WindowLimiter:
    """The counters of one quota (one limiter key and tier): both fixed windows, a pause, what was learned.

    ``counts`` maps ``(window seconds, window index)`` to the requests booked in that window. A
    request booked at ``t`` is counted in the windows of ``t`` and of ``t + margin``: it reaches the
    server a little after it leaves, and near a boundary we cannot tell on which side it lands.
    """

    tier: Tier
    margin: float
    burst: int = 0
    steady: int = 0
    learned: bool = False  # heard the server's RateLimit-* (or its silence) at least once
    probing: bool = False  # a probe request is out; others wait for what it learns
    paused_until: float = 0.0  # a 429's Retry-After
    generation: int = 0  # bumped when limits drop, so requests booked under the old ones rebook
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    _pruned_at: int = -1

    def __post_init__(self) -> None:
        self.burst = self.burst or self.tier.burst
        self.steady = self.steady or self.tier.steady

    def limit(self, window: int) -> int:
        """The current limit of a window (1 or 60 seconds)."""
        return self.burst if window == BURST_WINDOW else self.steady

    def _indices(self, window: int, at: float) -> set[int]:
        return {math.floor(at / window), math.floor((at + self.margin) / window)}

    def next_free(self, at: float) -> float:
        """The earliest instant ``>= at`` when both windows (and the margin's) have room."""
        at = max(at, self.paused_until)
        while True:
            for window in _WINDOWS:
                limit = self.limit(window)
                full = [i for i in self._indices(window, at) if self.counts.get((window, i), 0) >= limit]
                if full:
                    at = (max(full) + 1) * window
                    break
            else:
                return at

    def book(self, at: float, now: float) -> None:
        """Count a request to be sent at ``at`` (``now`` or later)."""
        for window in _WINDOWS:
            for index in self._indices(window, at):
                self.counts[(window, index)] = self.counts.get((window, index), 0) + 1
        # Prune by the present, not by ``at``: a booking far ahead must not drop today's counts.
        self._prune(now)

    def unbook(self, at: float) -> None:
        """Return a booking that will not be sent (cancelled, or rebooked after a pause)."""
        for window in _WINDOWS:
            for index in self._indices(window, at):
                key = (window, index)
                if self.counts.get(key, 0) > 0:
                    self.counts[key] -= 1

    def _prune(self, now: float) -> None:
        minute = math.floor(now / STEADY_WINDOW)
        if minute == self._pruned_at:
            return
        self._pruned_at = minute
        oldest = {window: math.floor(now / window) - 2 for window in _WINDOWS}
        for key in [k for k in self.counts if k[1] < oldest[k[0]]]:
            del self.counts[key]

    def learn_limits(self, limits: Mapping[int, int]) -> None:
        """Adopt the limits the server announced (``{1: burst, 60: steady}``)."""
        burst = limits.get(BURST_WINDOW, self.burst)
        steady = limits.get(STEADY_WINDOW, self.steady)
        if burst < self.burst or steady < self.steady:
            self.generation += 1  # requests already booked under higher limits rebook
        self.burst, self.steady = max(1, burst), max(1, steady)

    def reconcile(
        self, sent_at: float, now: float, remaining: int, reset: float, window: int | None = None
    ) -> None:
        """Raise our count to what the server reports having seen, if that is more than we booked.

        ``RateLimit-Remaining`` is the remainder of the binding window when the server admitted the
        request: the steady one when nothing remains and ``RateLimit-Reset`` is over a second (a burst
        window never resets later); else ``window`` when the server named it (first number of
        ``RateLimit-Limit``); else the one our own counts say is tighter. Applied only while that
        window is still the current one.
        """
        chosen: int
        if remaining == 0 and reset > BURST_WINDOW:
            chosen = STEADY_WINDOW  # certain: a burst window never resets more than a second away
        elif window is not None and window in _WINDOWS:
            chosen = window
        else:
            chosen = min(
                _WINDOWS,
                key=lambda w: self.limit(w) - self.counts.get((w, math.floor(sent_at / w)), 0),
            )
        index = math.floor(sent_at / chosen)
        if math.floor(now / chosen) != index:
            return
        seen = self.limit(chosen) - max(0, remaining)
        key = (chosen, index)
        if seen > self.counts.get(key, 0):
            self.counts[key] = seen

    def pause(self, until: float) -> None:
        """Send nothing before ``until`` (a 429's ``Retry-After``)."""
        if until > self.paused_until:
            self.paused_until = until
            self.generation += 1


class Permit:
    """The right to send one request now; report the answer with :meth:`settle` (exactly once)."""

    __slots__ = ("_buckets", "_clock", "_probe", "_settled", "sent_at", "waited")

    def __init__(
        self, buckets: Sequence[WindowLimiter], sent_at: float, waited: float, probe: bool, clock: Clock
    ) -> None:
        self._buckets = buckets
        self._clock = clock
        self._probe = probe
        self._settled = False
        self.sent_at = sent_at
        self.waited = waited  # seconds spent waiting for the quota

    def settle(self, status: int | None, headers: Mapping[str, str] | None = None) -> None:
        """Learn from the answer: ``status`` None means no answer (connection failed)."""
        if self._settled:
            return
        self._settled = True
        primary = self._buckets[0]
        if self._probe:
            primary.probing = False
        if status is None:
            return
        # Header names are case-insensitive; a plain dict (tests, other HTTP libraries) may not be.
        headers = {name.lower(): value for name, value in (headers or {}).items()}
        now = self._clock.now()
        if status == 429:
            # Without Retry-After, one second: the shortest fixed window.
            until = now + parse_retry_after(headers.get("retry-after"), now)
            for bucket in self._buckets:
                bucket.pause(until)
            return
        limits = parse_rate_limit_header(headers.get("ratelimit-limit"))
        binding = binding_window(headers.get("ratelimit-limit"), limits)
        if limits:
            primary.learned = True
            primary.learn_limits(limits)
            _scale_extra_quotas(primary, self._buckets[1:])
        elif 200 <= status < 300:
            # A success without RateLimit-* headers: this server announces nothing; trust the table.
            # (Errors answered before the limiter, such as a 401, say nothing either way: keep probing.)
            primary.learned = True
        remaining = headers.get("ratelimit-remaining")
        if remaining is not None and remaining.strip().lstrip("-").isdigit():
            reset_raw = (headers.get("ratelimit-reset") or "0").strip()
            reset = float(reset_raw) if reset_raw.replace(".", "", 1).isdigit() else 0.0
            primary.reconcile(self.sent_at, now, int(remaining), reset, binding)


def _scale_extra_quotas(primary: WindowLimiter, extras: Sequence[WindowLimiter]) -> None:
    """Give the stricter extra quotas the scale the server announced for the endpoint's own tier.

    Headers describe only the endpoint's own quota. Real Klaviyo announces its published limits
    (scale 1: nothing changes); a sandbox run with ``--rate-limits xN`` announces N times them, and
    its extra quotas (``profile_count``) are N times theirs too — without this they would stay at
    1/s, 15/min and a scaled benchmark would measure our caution instead of the limits.
    """
    scale = primary.burst / primary.tier.burst
    if scale <= 1 or primary.steady != round(primary.tier.steady * scale):
        return
    for extra in extras:
        if not extra.learned:
            extra.burst = max(extra.burst, round(extra.tier.burst * scale))
            extra.steady = max(extra.steady, round(extra.tier.steady * scale))


class LimiterRegistry:
    """Every quota of the process: one :class:`WindowLimiter` per ``(limiter key, tier name)``.

    ``margin`` is how late after booking a request may reach the server and still be counted in
    the window we booked it in (see :class:`WindowLimiter`).
    """

    def __init__(self, clock: Clock | None = None, *, margin: float = 0.1, probe_poll: float = 0.02) -> None:
        self.clock = clock or SystemClock()
        self.margin = margin
        self.probe_poll = probe_poll
        self._buckets: dict[tuple[str, str], WindowLimiter] = {}

    def bucket(self, key: str, tier: Tier) -> WindowLimiter:
        """The counters of ``tier`` for ``key`` (created with the configured limits on first use)."""
        found = self._buckets.get((key, tier.name))
        if found is None:
            found = self._buckets[(key, tier.name)] = WindowLimiter(tier=tier, margin=self.margin)
        return found

    async def acquire(self, key: str, tiers: Sequence[Tier]) -> Permit:
        """Wait until a request touching ``tiers`` (the endpoint's first) may be sent, and book it."""
        if not tiers:
            raise ValueError("a request needs at least its endpoint's tier")
        buckets = [self.bucket(key, tier) for tier in tiers]
        primary = buckets[0]
        clock = self.clock
        started = clock.now()
        while True:
            now = clock.now()
            if not primary.learned and primary.probing:
                await clock.sleep(self.probe_poll)  # the probe's answer tells us the real limits
                continue
            at = now
            while True:  # the earliest instant every bucket has room
                later = max(bucket.next_free(at) for bucket in buckets)
                if later == at:
                    break
                at = later
            for bucket in buckets:
                bucket.book(at, now)
            probe = not primary.learned
            if probe:
                primary.probing = True
            generations = [bucket.generation for bucket in buckets]
            try:
                if at > now:
                    await clock.sleep(at - now)
            except BaseException:
                self._release(buckets, at, probe)
                raise
            if any(bucket.generation != gen for bucket, gen in zip(buckets, generations, strict=True)):
                # Paused by a 429 or limits lowered while we waited: this booking may no longer fit.
                self._release(buckets, at, probe)
                continue
            return Permit(buckets, at, clock.now() - started, probe, clock)

    @staticmethod
    def _release(buckets: Sequence[WindowLimiter], at: float, probe: bool) -> None:
        for bucket in buckets:
            bucket.unbook(at)
        if probe:
            buckets[0].probing = False

    def limiter_keys(self) -> set[str]:
        """Every limiter key the registry has seen."""
        return {key for key, _ in self._buckets}

    def snapshot(self, key: str) -> dict[str, dict[str, float]]:
        """What the registry knows of ``key``'s quotas (for logs and tests)."""
        return {
            name: {"burst": b.burst, "steady": b.steady, "paused_until": b.paused_until, "learned": b.learned}
            for (k, name), b in self._buckets.items()
            if k == key
        }


_DEFAULT: LimiterRegistry | None = None


def default_registry() -> LimiterRegistry:
    """The process-wide registry every client uses unless given another."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LimiterRegistry()
    return _DEFAULT


def fixed_window_ceiling_seconds(requests: int, start: float, burst: int, steady: int) -> float:
    """Seconds from ``start`` until ``requests`` can all have been admitted under both fixed windows.

    The best any client can do against Klaviyo's clock-aligned 1 s and 60 s windows: greedily send
    as many as the current second and minute still allow, else move to the next boundary of the
    full window. Benchmarks divide this by their wall time.
    """
    if requests <= 0:
        return 0.0
    t, sent = start, 0
    burst_used: dict[int, int] = {}
    steady_used: dict[int, int] = {}
    while True:
        second, minute = math.floor(t), math.floor(t / 60)
        room = min(burst - burst_used.get(second, 0), steady - steady_used.get(minute, 0))
        if room > 0:
            take = min(room, requests - sent)
            burst_used[second] = burst_used.get(second, 0) + take
            steady_used[minute] = steady_used.get(minute, 0) + take
            sent += take
            if sent == requests:
                return t - start
        t = (minute + 1) * 60.0 if steady_used.get(minute, 0) >= steady else second + 1.0
