"""Identifier generators shaped like Klaviyo's own (see the reference's fidelity notes).

Klaviyo uses 26-char ULIDs for profiles, campaigns and webhooks, 6-char strings for accounts,
lists, segments, metrics, flows and flow messages, numeric strings for flow actions, 11-char
strings for events and long base64url strings for bulk-import jobs. Every generator takes a
``random.Random`` so the demo seed is deterministic; ULIDs take an explicit time for the same reason.
"""

from __future__ import annotations

import base64
import random
import re
import string
from datetime import datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_SHORT_ALPHABET = string.ascii_letters + string.digits

ULID_PATTERN = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
SHORT_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{6}$")


def ulid(rng: random.Random, at: datetime) -> str:
    """A ULID whose time part is ``at`` and whose random part comes from ``rng``."""
    millis = int(at.timestamp() * 1000)
    value = (millis << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def short_id(rng: random.Random, length: int = 6) -> str:
    """A 6-character id like Klaviyo's list, segment, metric and flow ids (``Y6nRLr``)."""
    return "".join(rng.choice(_SHORT_ALPHABET) for _ in range(length))


def event_id(rng: random.Random) -> str:
    """An 11-character event id."""
    return short_id(rng, 11)


def numeric_id(rng: random.Random) -> str:
    """A numeric string like Klaviyo's flow-action ids (``"116466132"``)."""
    return str(rng.randrange(100_000_000, 999_999_999))


def job_id(rng: random.Random) -> str:
    """A long base64url id like Klaviyo's bulk-import job ids."""
    return base64.urlsafe_b64encode(rng.randbytes(30)).decode().rstrip("=")


def token(rng: random.Random, prefix: str = "", nbytes: int = 32) -> str:
    """An opaque secret-looking token (API keys, OAuth codes and tokens)."""
    return prefix + base64.urlsafe_b64encode(rng.randbytes(nbytes)).decode().rstrip("=")
