"""The connection store: which Recart account is connected to which Klaviyo account, in what state,
with which (encrypted) tokens and webhook secret, plus the OAuth ``state`` values in flight.

Embedded default: one SQLite file (WAL mode, busy timeout), shared by every process of the deployment
(integration service, Dagster runs, sensors). Secrets are sealed with ``MultiFernet`` before they reach
SQL, so the file, its ``-wal`` journal and backups never hold a plaintext token, refresh token, PKCE code
verifier or webhook secret. Keys come from ``RECART_ENCRYPTION_KEY`` (comma-separated; the first one
encrypts, all of them decrypt, which is how keys are rotated).

Concurrency: every write is one ``BEGIN IMMEDIATE`` transaction; ``replace_tokens`` is a compare-and-swap
on ``token_version``; ``refresh_lock`` serialises token refreshes per connection across threads *and*
processes (``fcntl.flock`` on a lock file beside the database), so a refresher that re-reads the tokens
inside the lock never throws away a newer refresh token another process just obtained.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from connectors.klaviyo.errors import (
    ConnectionNotFound,
    ConnectionRemoved,
    EncryptionKeyError,
    OAuthCallbackError,
)
from connectors.klaviyo.push_settings import PushSettings

__all__ = [
    "ENCRYPTION_KEY_ENV",
    "STATE_DB_DEFAULT",
    "STATE_DB_ENV",
    "Connection",
    "ConnectionState",
    "ConnectionStore",
    "EncryptionKeyError",
    "PendingAuthorization",
    "TokenSet",
    "generate_key",
]

log = logging.getLogger(__name__)

ENCRYPTION_KEY_ENV = "RECART_ENCRYPTION_KEY"
STATE_DB_ENV = "RECART_STATE_DB"
STATE_DB_DEFAULT = ".state/state.db"
SCHEMA_VERSION = 1
_KEYGEN_HINT = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)
_BUSY_TIMEOUT_SECONDS = 30.0
# A fixed plaintext sealed with the primary key, so a wrong key fails loudly when the store opens
# instead of much later, in the middle of a refresh.
_KEY_CHECK_PLAINTEXT = "recart-klaviyo connection store key check"


class ConnectionState(StrEnum):
    """Lifecycle of a connection (see DESIGN.md, "Connects")."""

    ACTIVE = "active"
    INACTIVE = "inactive"  # switched off by the shop: no API calls
    NEEDS_REAUTH = "needs_reauth"  # refresh failed or a required scope is missing: the shop must reconnect
    REMOVED = "removed"  # revoked at Klaviyo; secrets wiped


def generate_key() -> str:
    """A fresh Fernet key (url-safe base64 text) for ``RECART_ENCRYPTION_KEY``."""
    return Fernet.generate_key().decode("ascii")


def _utc(value: datetime, what: str) -> datetime:
    """``value`` converted to UTC; naive datetimes are refused (their meaning depends on the host)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _normalize_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """Scopes as a sorted tuple without duplicates; a space-separated string (OAuth's form) is split."""
    if isinstance(scopes, str):
        scopes = scopes.split()
    return tuple(sorted({s for s in scopes if s}))


@dataclass(frozen=True)
class TokenSet:
    """An access token, its refresh token, when the access token expires and the scopes granted."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: datetime
    scopes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Normalise: ``expires_at`` to aware UTC, ``scopes`` to a sorted tuple."""
        if not self.access_token or not self.refresh_token:
            raise ValueError("TokenSet needs a non-empty access token and refresh token")
        object.__setattr__(self, "expires_at", _utc(self.expires_at, "TokenSet.expires_at"))
        object.__setattr__(self, "scopes", _normalize_scopes(self.scopes))

    def expires_within(self, seconds: float, now: datetime | None = None) -> bool:
        """True if the access token is expired or expires within ``seconds`` from ``now``."""
        current = datetime.now(UTC) if now is None else _utc(now, "now")
        return self.expires_at - current <= timedelta(seconds=seconds)


@dataclass(frozen=True)
class Connection:
    """One Recart account's Klaviyo connection as everyone may see it: no secrets in here."""

    recart_account_id: str
    klaviyo_account_id: str | None
    state: ConnectionState
    state_reason: str | None
    granted_scopes: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    access_token_expires_at: datetime | None
    token_version: int  # bumps on every token write (save, refresh, wipe)
    last_refreshed_at: datetime | None
    has_webhook_secret: bool


@dataclass(frozen=True)
class PendingAuthorization:
    """An OAuth authorization in flight: the ``state`` sent to Klaviyo and the PKCE verifier it needs back."""

    state: str
    recart_account_id: str
    code_verifier: str = field(repr=False)
    redirect_uri: str
    created_at: datetime
    expires_at: datetime


_SCHEMA = """
create table if not exists schema_version (
    version integer not null
);
create table if not exists store_meta (
    name text primary key,
    value text not null
);
create table if not exists connections (
    recart_account_id text primary key,
    klaviyo_account_id text,
    state text not null check (state in ('active', 'inactive', 'needs_reauth', 'removed')),
    state_reason text,
    granted_scopes text not null default '[]',
    created_at text not null,
    updated_at text not null,
    access_token_enc text,
    refresh_token_enc text,
    access_token_expires_at text,
    token_version integer not null default 0,
    last_refreshed_at text,
    webhook_secret_enc text,
    webhook_id text
);
create index if not exists connections_by_klaviyo_account on connections (klaviyo_account_id);
create index if not exists connections_by_webhook_id on connections (webhook_id);
create table if not exists pending_authorizations (
    state_hash text primary key,
    recart_account_id text not null,
    code_verifier_enc text not null,
    redirect_uri text not null,
    created_at text not null,
    expires_at text not null
);
create index if not exists pending_authorizations_by_expiry on pending_authorizations (expires_at);
create table if not exists connection_events (
    event_id integer primary key autoincrement,
    recart_account_id text not null,
    at text not null,
    kind text not null,
    detail text not null default '{}'
);
create index if not exists connection_events_by_account on connection_events (recart_account_id, event_id);
create table if not exists push_settings (
    recart_account_id text primary key,
    email_list_id text,
    sms_list_id text,
    sms_countries text not null,
    list_names text not null default '{}',
    enabled integer not null,
    enabled_since text,
    updated_at text not null,
    klaviyo_account_id text,  -- whose lists these are (null: saved before this column existed)
    stopped_at text,  -- the last push stopped for too many refusals (null: it did not)
    stopped_reason text
);
"""

_CONNECTION_COLUMNS = (
    "recart_account_id, klaviyo_account_id, state, state_reason, granted_scopes, created_at, updated_at, "
    "access_token_expires_at, token_version, last_refreshed_at, webhook_secret_enc is not null"
)

# Per-process registry of thread locks, keyed by lock-file path, so that two ConnectionStore objects
# on the same file in one process still exclude each other (flock alone would too, but the thread lock
# makes waiting threads block instead of poll).
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()


def _thread_lock(key: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _state_hash(state: str) -> str:
    # Only a hash of the OAuth state is stored: the file alone never yields a usable callback.
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


class ConnectionStore:
    """Connections, encrypted tokens and webhook secrets, pending OAuth authorizations and an audit trail.

    Safe to share between threads; every process opens its own store on the same file.
    """

    def __init__(
        self,
        path: str | Path,
        encryption_keys: str | Sequence[str],
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Open (creating if needed) the SQLite file at ``path``; ``encryption_keys`` as for ``from_env``.

        ``clock`` returns the current aware time (tests inject one to exercise expiry).
        """
        self._fernet = _build_fernet(encryption_keys)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise ValueError("ConnectionStore needs a file path (processes share it; locks live beside it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Owner-only from the first byte; SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._lock_dir = Path(f"{self.path}.locks")
        self._lock_dir.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # shared between threads, serialised by self._lock
        )
        try:
            self._db.execute(f"pragma busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
            self._db.execute("pragma journal_mode = wal")
            self._db.execute("pragma synchronous = normal")
            # Deleted or overwritten content (wiped ciphertexts) is zeroed, not left in free pages.
            self._db.execute("pragma secure_delete = on")
            self._db.execute("pragma foreign_keys = on")
            self._create_schema()
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # ------------------------------------------------------------------------ opening and closing

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectionStore:
        """Open the store named by ``RECART_STATE_DB`` (default ``.state/state.db``) with the keys in
        ``RECART_ENCRYPTION_KEY`` (required; comma-separated, the first one encrypts)."""
        env = os.environ if environ is None else environ
        keys = env.get(ENCRYPTION_KEY_ENV, "")
        if not keys.strip():
            raise EncryptionKeyError(
                f"{ENCRYPTION_KEY_ENV} is not set: the connection store encrypts OAuth tokens and webhook "
                f"secrets with it; {_KEYGEN_HINT}"
            )
        return cls(env.get(STATE_DB_ENV) or STATE_DB_DEFAULT, keys)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ConnectionStore:
        """Use as a context manager; closes on exit."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the store."""
        self.close()

    def __repr__(self) -> str:
        """The path only; never keys."""
        return f"ConnectionStore(path={str(self.path)!r})"

    # ------------------------------------------------------------------------ OAuth state

    def create_pending_authorization(
        self, recart_account_id: str, code_verifier: str, redirect_uri: str, ttl_seconds: int = 600
    ) -> PendingAuthorization:
        """Start an authorization: a random single-use ``state`` bound to the account, valid ``ttl_seconds``.

        The PKCE ``code_verifier`` is stored encrypted; expired leftovers of abandoned attempts are purged.
        """
        if not recart_account_id:
            raise ValueError("recart_account_id must not be empty")
        if not code_verifier:
            raise ValueError("code_verifier must not be empty")
        now = self._now()
        pending = PendingAuthorization(
            state=secrets.token_urlsafe(32),
            recart_account_id=recart_account_id,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        sealed = self._seal("code_verifier", pending.state, code_verifier)
        with self._write() as db:
            db.execute("delete from pending_authorizations where expires_at < ?", (_iso(now),))
            db.execute(
                "insert into pending_authorizations"
                " (state_hash, recart_account_id, code_verifier_enc, redirect_uri, created_at, expires_at)"
                " values (?, ?, ?, ?, ?, ?)",
                (
                    _state_hash(pending.state),
                    recart_account_id,
                    sealed,
                    redirect_uri,
                    _iso(now),
                    _iso(pending.expires_at),
                ),
            )
        return pending

    def consume_pending_authorization(self, state: str) -> PendingAuthorization:
        """Take the authorization for ``state`` out of the store (it can be used once).

        Raises ``OAuthCallbackError`` with reason ``invalid_state`` (unknown or already used) or
        ``expired_state`` (too old; removed all the same).
        """
        with self._write() as db:
            # Delete-returning in one statement: two callbacks racing on one state cannot both win.
            row = db.execute(
                "delete from pending_authorizations where state_hash = ?"
                " returning recart_account_id, code_verifier_enc, redirect_uri, created_at, expires_at",
                (_state_hash(state or ""),),
            ).fetchone()
        if row is None:
            raise OAuthCallbackError(
                "This Klaviyo connection link is invalid or was already used. "
                "Please start connecting Klaviyo again from Recart.",
                reason="invalid_state",
            )
        account, sealed, redirect_uri, created_at, expires_at = row
        expires = _parse(expires_at)
        assert expires is not None
        if self._now() >= expires:
            raise OAuthCallbackError(
                "This Klaviyo connection link has expired. "
                "Please start connecting Klaviyo again from Recart.",
                reason="expired_state",
            )
        return PendingAuthorization(
            state=state,
            recart_account_id=account,
            code_verifier=self._open("code_verifier", state, sealed),
            redirect_uri=redirect_uri,
            created_at=_parse(created_at) or expires,
            expires_at=expires,
        )

    # ------------------------------------------------------------------------ connections

    def save_connection(
        self,
        recart_account_id: str,
        klaviyo_account_id: str | None,
        tokens: TokenSet,
        state: ConnectionState,
        state_reason: str | None = None,
    ) -> Connection:
        """Insert the connection, or replace it on reconnect (new tokens and state; ``created_at`` kept).

        A webhook secret of the same Klaviyo account survives a reconnect; one of another account does not.
        """
        if not recart_account_id:
            raise ValueError("recart_account_id must not be empty")
        state = ConnectionState(state)
        if state is ConnectionState.REMOVED:
            raise ValueError(
                "save_connection stores tokens; a removed connection has none (use wipe_secrets)"
            )
        now = _iso(self._now())
        with self._write() as db:
            old = db.execute(
                "select klaviyo_account_id, state from connections where recart_account_id = ?",
                (recart_account_id,),
            ).fetchone()
            sealed_access = self._seal("access_token", recart_account_id, tokens.access_token)
            sealed_refresh = self._seal("refresh_token", recart_account_id, tokens.refresh_token)
            values = (
                klaviyo_account_id,
                state.value,
                state_reason,
                json.dumps(list(tokens.scopes)),
                now,
                sealed_access,
                sealed_refresh,
                _iso(tokens.expires_at),
            )
            if old is None:
                db.execute(
                    "insert into connections (klaviyo_account_id, state, state_reason, granted_scopes,"
                    " updated_at, access_token_enc, refresh_token_enc, access_token_expires_at,"
                    " recart_account_id, created_at, token_version)"
                    " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (*values, recart_account_id, now),
                )
                kind = "connected"
            else:
                same_account = old[0] == klaviyo_account_id
                db.execute(
                    "update connections set klaviyo_account_id = ?, state = ?, state_reason = ?,"
                    " granted_scopes = ?, updated_at = ?, access_token_enc = ?, refresh_token_enc = ?,"
                    " access_token_expires_at = ?, token_version = token_version + 1,"
                    " last_refreshed_at = null,"
                    # A secret registered with another Klaviyo account must never verify this one's events.
                    " webhook_secret_enc = case when ? then webhook_secret_enc end,"
                    " webhook_id = case when ? then webhook_id end"
                    " where recart_account_id = ?",
                    (*values, same_account, same_account, recart_account_id),
                )
                kind = "reconnected"
            self._event(
                db,
                recart_account_id,
                now,
                kind,
                {
                    "klaviyo_account_id": klaviyo_account_id,
                    "state": state.value,
                    "reason": state_reason,
                    "scopes": list(tokens.scopes),
                    "access_token_expires_at": _iso(tokens.expires_at),
                    **({"previous_state": old[1]} if old else {}),
                },
            )
            connection = self._select_one(db, recart_account_id)
        log.info(
            "Klaviyo connection %s: account %s → Klaviyo %s, state %s",
            kind,
            recart_account_id,
            klaviyo_account_id,
            state.value,
        )
        assert connection is not None
        return connection

    def get(self, recart_account_id: str) -> Connection | None:
        """The connection of a Recart account, or None."""
        with self._lock:
            return self._select_one(self._conn(), recart_account_id)

    def require(self, recart_account_id: str) -> Connection:
        """The connection of a Recart account; ``ConnectionNotFound`` if there is none."""
        connection = self.get(recart_account_id)
        if connection is None:
            raise ConnectionNotFound(recart_account_id, "not connected")
        return connection

    def list(self, states: Iterable[ConnectionState] | None = None) -> list[Connection]:
        """Every connection (optionally only those in ``states``), ordered by Recart account id."""
        query = f"select {_CONNECTION_COLUMNS} from connections"
        params: tuple[str, ...] = ()
        if states is not None:
            wanted = tuple(sorted({ConnectionState(s).value for s in states}))
            if not wanted:
                return []
            query += f" where state in ({', '.join('?' for _ in wanted)})"
            params = wanted
        with self._lock:
            rows = self._conn().execute(query + " order by recart_account_id", params).fetchall()
        return [_connection(row) for row in rows]

    def tokens(self, recart_account_id: str) -> TokenSet:
        """The decrypted tokens; ``ConnectionNotFound``, or ``ConnectionRemoved`` once secrets are wiped."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "select access_token_enc, refresh_token_enc, access_token_expires_at, granted_scopes"
                    " from connections where recart_account_id = ?",
                    (recart_account_id,),
                )
                .fetchone()
            )
        if row is None:
            raise ConnectionNotFound(recart_account_id, "not connected")
        access, refresh, expires_at, scopes = row
        if access is None or refresh is None or expires_at is None:
            raise ConnectionRemoved(recart_account_id, "tokens were wiped; the shop must connect again")
        return TokenSet(
            access_token=self._open("access_token", recart_account_id, access),
            refresh_token=self._open("refresh_token", recart_account_id, refresh),
            expires_at=datetime.fromisoformat(expires_at),
            scopes=tuple(json.loads(scopes)),
        )

    def set_state(
        self,
        recart_account_id: str,
        state: ConnectionState,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> Connection:
        """Move the connection to ``state`` (with a reason people can read).

        ``REMOVED`` wipes the secrets (as ``wipe_secrets``); a removed connection cannot be revived here
        (``ConnectionRemoved``): it needs new tokens through ``save_connection``.

        With ``expected_version``, the change applies only while ``token_version`` is still that
        (checked in the same transaction): otherwise nothing changes and the current connection is
        returned, so a verdict on tokens (say "the refresh token is dead") never lands on newer ones.
        Not for ``REMOVED`` (``ValueError``).
        """
        state = ConnectionState(state)
        if state is ConnectionState.REMOVED:
            if expected_version is not None:
                raise ValueError("expected_version is not supported for REMOVED (use wipe_secrets)")
            return self.wipe_secrets(recart_account_id, reason=reason)
        now = _iso(self._now())
        with self._write() as db:
            current = self._select_one(db, recart_account_id)
            if current is None:
                raise ConnectionNotFound(recart_account_id, "not connected")
            if expected_version is not None and current.token_version != expected_version:
                log.info(
                    "State change of account %s to %s skipped: token version is %s, expected %s",
                    recart_account_id,
                    state.value,
                    current.token_version,
                    expected_version,
                )
                return current
            if current.state is ConnectionState.REMOVED:
                raise ConnectionRemoved(recart_account_id, f"cannot become {state.value}; connect again")
            if current.state is state and current.state_reason == reason:
                return current
            db.execute(
                "update connections set state = ?, state_reason = ?, updated_at = ?"
                " where recart_account_id = ?",
                (state.value, reason, now, recart_account_id),
            )
            self._event(
                db,
                recart_account_id,
                now,
                "state_changed",
                {"from": current.state.value, "to": state.value, "reason": reason},
            )
            connection = self._select_one(db, recart_account_id)
        log.info(
            "Klaviyo connection of account %s: %s → %s (%s)",
            recart_account_id,
            current.state.value,
            state.value,
            reason,
        )
        assert connection is not None
        return connection

    def replace_tokens(self, recart_account_id: str, tokens: TokenSet, *, expected_version: int) -> bool:
        """Store refreshed tokens if ``token_version`` is still ``expected_version`` (compare-and-swap).

        Returns False, writing nothing, if someone else wrote tokens first. Raises ``ConnectionNotFound``,
        or ``ConnectionRemoved`` if the secrets were wiped (a late refresh must not resurrect them).
        """
        now = _iso(self._now())
        with self._write() as db:
            row = db.execute(
                "select token_version, access_token_enc is null from connections where recart_account_id = ?",
                (recart_account_id,),
            ).fetchone()
            if row is None:
                raise ConnectionNotFound(recart_account_id, "not connected")
            version, wiped = row
            if wiped:
                raise ConnectionRemoved(
                    recart_account_id, "tokens were wiped; refreshed tokens are discarded"
                )
            if version != expected_version:
                log.info(
                    "Token write for account %s skipped: version is %s, expected %s",
                    recart_account_id,
                    version,
                    expected_version,
                )
                return False
            db.execute(
                "update connections set access_token_enc = ?, refresh_token_enc = ?,"
                " access_token_expires_at = ?, granted_scopes = ?, token_version = token_version + 1,"
                " last_refreshed_at = ?, updated_at = ? where recart_account_id = ? and token_version = ?",
                (
                    self._seal("access_token", recart_account_id, tokens.access_token),
                    self._seal("refresh_token", recart_account_id, tokens.refresh_token),
                    _iso(tokens.expires_at),
                    json.dumps(list(tokens.scopes)),
                    now,
                    now,
                    recart_account_id,
                    expected_version,
                ),
            )
            self._event(
                db,
                recart_account_id,
                now,
                "refreshed",
                {
                    "token_version": expected_version + 1,
                    "access_token_expires_at": _iso(tokens.expires_at),
                    "scopes": list(tokens.scopes),
                },
            )
        return True

    def refresh_lock(self, recart_account_id: str, timeout: float = 30.0) -> AbstractContextManager[None]:
        """Hold the refresh lock of one connection: exclusive across threads and processes.

        Refresh inside it as: re-read ``require``/``tokens``; if still stale, refresh, then
        ``replace_tokens(expected_version=...)``. Re-entrant within a thread. ``TimeoutError`` after
        ``timeout`` seconds of waiting.
        """
        return self._account_lock(recart_account_id, "", "token refresh", timeout)

    def push_lock(self, recart_account_id: str, timeout: float = 30 * 60.0) -> AbstractContextManager[None]:
        """Hold the subscriber push lock of one account: one push of a shop at a time, across
        threads and processes (the schedule, the landing sensor and the CLI may start one each).

        Two overlapping pushes would each plan from a ledger the other is changing: a subscribe
        planned from older data could reach Klaviyo after a newer opt-out. Re-entrant within a
        thread; ``TimeoutError`` after ``timeout`` seconds of waiting (a push of 200k contacts takes
        minutes).
        """
        return self._account_lock(recart_account_id, "push:", "subscriber push", timeout)

    @contextmanager
    def _account_lock(
        self, recart_account_id: str, prefix: str, purpose: str, timeout: float
    ) -> Iterator[None]:
        """An exclusive lock per account and purpose: a thread lock, then ``flock`` on a file in the
        lock folder (its name hashes ``prefix`` + the account, so any account id makes a safe name)."""
        name = hashlib.sha256((prefix + recart_account_id).encode("utf-8")).hexdigest()
        path = self._lock_dir / f"{name}.lock"
        key = str(path.resolve())
        if not hasattr(_HELD, "depth"):
            _HELD.depth = {}
        held: dict[str, int] = _HELD.depth
        if held.get(key):
            held[key] += 1
            try:
                yield
            finally:
                held[key] -= 1
            return

        deadline = time.monotonic() + timeout
        thread_lock = _thread_lock(key)
        if not thread_lock.acquire(timeout=max(timeout, 0.0)):
            raise _lock_timeout(recart_account_id, purpose, timeout)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _flock_until(fd, deadline, recart_account_id, purpose, timeout)
                held[key] = 1
                try:
                    yield
                finally:
                    held.pop(key, None)
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            thread_lock.release()

    def wipe_secrets(self, recart_account_id: str, reason: str | None = None) -> Connection:
        """Delete tokens and webhook secret (columns set to NULL) and mark the connection REMOVED."""
        now = _iso(self._now())
        with self._write() as db:
            current = self._select_one(db, recart_account_id)
            if current is None:
                raise ConnectionNotFound(recart_account_id, "not connected")
            db.execute(
                "update connections set access_token_enc = null, refresh_token_enc = null,"
                " access_token_expires_at = null, webhook_secret_enc = null, webhook_id = null,"
                " token_version = token_version + 1, state = ?, state_reason = ?, updated_at = ?"
                " where recart_account_id = ?",
                (ConnectionState.REMOVED.value, reason, now, recart_account_id),
            )
            self._event(
                db,
                recart_account_id,
                now,
                "secrets_wiped",
                {"from": current.state.value, "to": ConnectionState.REMOVED.value, "reason": reason},
            )
            connection = self._select_one(db, recart_account_id)
        log.info("Klaviyo connection of account %s removed; secrets wiped (%s)", recart_account_id, reason)
        assert connection is not None
        return connection

    def delete(self, recart_account_id: str) -> None:
        """Forget the connection and its pending authorizations (the audit trail, free of secrets, stays)."""
        now = _iso(self._now())
        with self._write() as db:
            deleted = db.execute(
                "delete from connections where recart_account_id = ?", (recart_account_id,)
            ).rowcount
            db.execute("delete from pending_authorizations where recart_account_id = ?", (recart_account_id,))
            if deleted:
                self._event(db, recart_account_id, now, "deleted", {})
        if deleted:
            log.info("Klaviyo connection of account %s deleted", recart_account_id)

    # ------------------------------------------------------------------------ webhook secrets

    def set_webhook_secret(self, recart_account_id: str, secret: str, webhook_id: str | None = None) -> None:
        """Store (encrypted) the secret Klaviyo signs this account's webhook deliveries with."""
        if not secret:
            raise ValueError("webhook secret must not be empty")
        now = _iso(self._now())
        with self._write() as db:
            current = self._select_one(db, recart_account_id)
            if current is None:
                raise ConnectionNotFound(recart_account_id, "not connected")
            if current.state is ConnectionState.REMOVED:
                raise ConnectionRemoved(recart_account_id, "cannot hold a webhook secret; connect again")
            db.execute(
                "update connections set webhook_secret_enc = ?, webhook_id = ?, updated_at = ?"
                " where recart_account_id = ?",
                (self._seal("webhook_secret", recart_account_id, secret), webhook_id, now, recart_account_id),
            )
            self._event(db, recart_account_id, now, "webhook_secret_set", {"webhook_id": webhook_id})

    def webhook_secret(self, recart_account_id: str) -> tuple[str, str | None] | None:
        """``(secret, webhook_id)`` of the account's webhook, or None if there is none."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "select webhook_secret_enc, webhook_id from connections where recart_account_id = ?",
                    (recart_account_id,),
                )
                .fetchone()
            )
        if row is None or row[0] is None:
            return None
        return self._open("webhook_secret", recart_account_id, row[0]), row[1]

    def find_by_klaviyo_account(self, klaviyo_account_id: str) -> Connection | None:
        """The connection of a Klaviyo account; if several Recart accounts share it, the active one
        (then the most recently updated) wins."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    f"select {_CONNECTION_COLUMNS} from connections where klaviyo_account_id = ?"
                    " order by state = 'active' desc, state = 'removed' asc, updated_at desc,"
                    " recart_account_id limit 1",
                    (klaviyo_account_id,),
                )
                .fetchone()
            )
        return None if row is None else _connection(row)

    def find_by_webhook_id(self, webhook_id: str) -> Connection | None:
        """The connection whose webhook has this id (exact even when Recart accounts share a Klaviyo one)."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    f"select {_CONNECTION_COLUMNS} from connections where webhook_id = ?"
                    " order by updated_at desc limit 1",
                    (webhook_id,),
                )
                .fetchone()
            )
        return None if row is None else _connection(row)

    # ------------------------------------------------------------------------ subscriber push settings

    def set_push_settings(self, settings: PushSettings) -> PushSettings:
        """Save an account's push settings (validate them first: ``validate_push_settings``).

        ``enabled_since`` is kept from the first time the push was enabled (for the same Klaviyo
        account); the settings belong to the Klaviyo account the shop is connected to now (see
        ``push_settings``); the change is audited.
        """
        now = self._now()
        with self._write() as db:
            current = self._select_one(db, settings.recart_account_id)
            if current is None:
                raise ConnectionNotFound(settings.recart_account_id, "not connected")
            if current.state is ConnectionState.REMOVED:
                raise ConnectionRemoved(
                    settings.recart_account_id, "cannot hold push settings; connect again"
                )
            row = db.execute(
                "select enabled_since, klaviyo_account_id from push_settings where recart_account_id = ?",
                (settings.recart_account_id,),
            ).fetchone()
            same_account = row is not None and row[1] in (None, current.klaviyo_account_id)
            since = row[0] if same_account and row[0] else (_iso(now) if settings.enabled else None)
            db.execute(
                "insert into push_settings (recart_account_id, email_list_id, sms_list_id, sms_countries,"
                " list_names, enabled, enabled_since, updated_at, klaviyo_account_id)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " on conflict (recart_account_id) do update set email_list_id = excluded.email_list_id,"
                " sms_list_id = excluded.sms_list_id, sms_countries = excluded.sms_countries,"
                " list_names = excluded.list_names, enabled = excluded.enabled,"
                " enabled_since = excluded.enabled_since, updated_at = excluded.updated_at,"
                " klaviyo_account_id = excluded.klaviyo_account_id,"
                # the shop changed its setup: the scheduled pushes try again at once
                " stopped_at = null, stopped_reason = null",
                (
                    settings.recart_account_id,
                    settings.email_list_id,
                    settings.sms_list_id,
                    json.dumps(list(settings.sms_countries)),
                    json.dumps(settings.list_names, sort_keys=True),
                    int(settings.enabled),
                    since,
                    _iso(now),
                    current.klaviyo_account_id,
                ),
            )
            self._event(
                db,
                settings.recart_account_id,
                _iso(now),
                "push_settings_changed",
                {
                    "email_list_id": settings.email_list_id,
                    "sms_list_id": settings.sms_list_id,
                    "sms_countries": list(settings.sms_countries),
                    "enabled": settings.enabled,
                },
            )
        saved = self.push_settings(settings.recart_account_id)
        assert saved is not None
        return saved

    def push_settings(self, recart_account_id: str) -> PushSettings | None:
        """The account's push settings, or None when the shop has not chosen a list yet in the
        Klaviyo account it is connected to now (lists chosen in another Klaviyo account, before the
        shop switched, do not exist in this one: the shop chooses again)."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "select email_list_id, sms_list_id, sms_countries, list_names, enabled, enabled_since,"
                    " push_settings.updated_at, push_settings.klaviyo_account_id,"
                    " connections.klaviyo_account_id, stopped_at, stopped_reason"
                    " from push_settings left join connections using (recart_account_id)"
                    " where recart_account_id = ?",
                    (recart_account_id,),
                )
                .fetchone()
            )
        if row is None:
            return None
        email_list, sms_list, countries, names, enabled, since, updated, owner, connected, stopped, why = row
        if owner is not None and owner != connected:
            return None
        return PushSettings(
            recart_account_id=recart_account_id,
            email_list_id=email_list,
            sms_list_id=sms_list,
            sms_countries=tuple(json.loads(countries)),
            enabled=bool(enabled),
            enabled_since=_parse(since),
            updated_at=_parse(updated),
            list_names=json.loads(names),
            stopped_at=_parse(stopped),
            stopped_reason=why,
        )

    def set_push_stopped(self, recart_account_id: str, reason: str | None) -> None:
        """Record that a push stopped for too many refusals (``reason``), or clear it (None); audited.

        A no-op for an account without push settings."""
        now = _iso(self._now())
        with self._write() as db:
            if reason:
                changed = db.execute(
                    "update push_settings set stopped_at = ?, stopped_reason = ? where recart_account_id = ?",
                    (now, reason, recart_account_id),
                ).rowcount
            else:  # only a stopped push resumes (and is audited)
                changed = db.execute(
                    "update push_settings set stopped_at = null, stopped_reason = null"
                    " where recart_account_id = ? and stopped_at is not null",
                    (recart_account_id,),
                ).rowcount
            if changed:
                self._event(
                    db,
                    recart_account_id,
                    now,
                    "push_stopped" if reason else "push_resumed",
                    {"reason": reason},
                )

    # ------------------------------------------------------------------------ audit and maintenance

    def history(self, recart_account_id: str) -> list[dict[str, Any]]:
        """The audit trail of one account, oldest first: ``{"at", "kind", "detail"}`` (never secrets)."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "select at, kind, detail from connection_events where recart_account_id = ?"
                    " order by event_id",
                    (recart_account_id,),
                )
                .fetchall()
            )
        return [
            {"at": datetime.fromisoformat(at), "kind": kind, "detail": json.loads(detail)}
            for at, kind, detail in rows
        ]

    def rotate_encryption(self) -> int:
        """Re-encrypt every stored secret with the first (primary) key; returns how many were rewritten.

        Run after putting a new key first in ``RECART_ENCRYPTION_KEY``; afterwards the old key can go.
        """
        count = 0
        sealed_columns = (
            (
                "connections",
                "recart_account_id",
                ("access_token_enc", "refresh_token_enc", "webhook_secret_enc"),
            ),
            ("pending_authorizations", "state_hash", ("code_verifier_enc",)),
            ("store_meta", "name", ("value",)),
        )
        with self._write() as db:
            for table, key_column, columns in sealed_columns:
                assignments = ", ".join(f"{column} = ?" for column in columns)
                for key, *values in db.execute(f"select {key_column}, {', '.join(columns)} from {table}"):
                    rotated = [None if value is None else self._rotate(value) for value in values]
                    db.execute(f"update {table} set {assignments} where {key_column} = ?", (*rotated, key))
                    if table != "store_meta":  # the key check is bookkeeping, not a secret
                        count += sum(value is not None for value in values)
        log.info("Re-encrypted %d stored secrets with the primary key", count)
        return count

    # ------------------------------------------------------------------------ internals

    def _now(self) -> datetime:
        return _utc(self._clock(), "clock()")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so a read-then-write
        never fails half-way with SQLITE_BUSY (the busy timeout covers the wait)."""
        with self._lock:
            db = self._conn()
            db.execute("begin immediate")
            try:
                yield db
                db.execute("commit")
            except BaseException:
                if db.in_transaction:
                    db.execute("rollback")
                raise

    def _create_schema(self) -> None:
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            push_settings_columns = {row[1] for row in db.execute("pragma table_info(push_settings)")}
            for column in ("klaviyo_account_id", "stopped_at", "stopped_reason"):
                if column not in push_settings_columns:  # a store from before it existed
                    db.execute(f"alter table push_settings add column {column} text")
            row = db.execute("select max(version) from schema_version").fetchone()
            if row[0] is None:
                db.execute("insert into schema_version (version) values (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {row[0]}; this code knows up to {SCHEMA_VERSION}"
                )
            check = db.execute("select value from store_meta where name = 'key_check'").fetchone()
            if check is None:
                db.execute(
                    "insert into store_meta (name, value) values ('key_check', ?)",
                    (self._seal("key_check", "", _KEY_CHECK_PLAINTEXT),),
                )
            elif self._open("key_check", "", check[0]) != _KEY_CHECK_PLAINTEXT:
                raise EncryptionKeyError(f"{self.path}: the key check decrypted to something unexpected")

    def _seal(self, purpose: str, owner: str, value: str) -> str:
        # The plaintext binds the secret to its purpose and owner (Fernet has no associated data), so a
        # ciphertext copied into another account's row or column fails to open instead of leaking across.
        payload = json.dumps([purpose, owner, value], separators=(",", ":")).encode("utf-8")
        return self._fernet.encrypt(payload).decode("ascii")

    def _open(self, purpose: str, owner: str, sealed: str) -> str:
        try:
            payload = self._fernet.decrypt(sealed.encode("ascii"))
        except InvalidToken:
            raise EncryptionKeyError(
                f"Cannot decrypt a stored {purpose.replace('_', ' ')} in {self.path} with the keys in "
                f"{ENCRYPTION_KEY_ENV}: the data was written with another key. If the key was rotated, list "
                "the new key first and keep the old one after it (comma-separated)."
            ) from None
        stored_purpose, stored_owner, value = json.loads(payload)
        if (stored_purpose, stored_owner) != (purpose, owner):
            raise EncryptionKeyError(
                f"A stored {purpose.replace('_', ' ')} in {self.path} belongs to another record; refusing it."
            )
        return value

    def _rotate(self, sealed: str) -> str:
        try:
            return self._fernet.rotate(sealed.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise EncryptionKeyError(
                f"Cannot re-encrypt {self.path}: a stored secret does not open with any key in "
                f"{ENCRYPTION_KEY_ENV}"
            ) from None

    @staticmethod
    def _select_one(db: sqlite3.Connection, recart_account_id: str) -> Connection | None:
        row = db.execute(
            f"select {_CONNECTION_COLUMNS} from connections where recart_account_id = ?", (recart_account_id,)
        ).fetchone()
        return None if row is None else _connection(row)

    @staticmethod
    def _event(
        db: sqlite3.Connection, recart_account_id: str, at: str, kind: str, detail: dict[str, Any]
    ) -> None:
        db.execute(
            "insert into connection_events (recart_account_id, at, kind, detail) values (?, ?, ?, ?)",
            (recart_account_id, at, kind, json.dumps(detail, sort_keys=True)),
        )


def _connection(row: Sequence[Any]) -> Connection:
    (account, klaviyo, state, reason, scopes, created, updated, expires, version, refreshed, has_secret) = row
    return Connection(
        recart_account_id=account,
        klaviyo_account_id=klaviyo,
        state=ConnectionState(state),
        state_reason=reason,
        granted_scopes=tuple(json.loads(scopes)),
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        access_token_expires_at=_parse(expires),
        token_version=version,
        last_refreshed_at=_parse(refreshed),
        has_webhook_secret=bool(has_secret),
    )


def _build_fernet(encryption_keys: str | Sequence[str]) -> MultiFernet:
    """MultiFernet over the keys (first encrypts); errors name the variable, never a key's value."""
    raw = encryption_keys.split(",") if isinstance(encryption_keys, str) else list(encryption_keys)
    keys = [k.strip() for k in raw if k and k.strip()]
    if not keys:
        raise EncryptionKeyError(
            f"No encryption key given ({ENCRYPTION_KEY_ENV} is empty); the connection store encrypts OAuth "
            f"tokens and webhook secrets with it; {_KEYGEN_HINT}"
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            raise EncryptionKeyError(
                f"Key #{position} in {ENCRYPTION_KEY_ENV} is not a Fernet key (32 url-safe base64-encoded "
                f"bytes); {_KEYGEN_HINT}"
            ) from None
    return MultiFernet(fernets)


def _lock_timeout(recart_account_id: str, purpose: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"Timed out after {timeout:g} s waiting for the {purpose} lock of Recart account "
        f"{recart_account_id!r} (another thread or process holds it)"
    )


def _flock_until(fd: int, deadline: float, recart_account_id: str, purpose: str, timeout: float) -> None:
    """Take an exclusive flock on ``fd``, polling (flock has no timeout of its own) until ``deadline``."""
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _lock_timeout(recart_account_id, purpose, timeout) from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
