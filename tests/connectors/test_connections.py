"""The connection store on a real SQLite file: lifecycle, OAuth state, compare-and-swap token writes,
encryption at rest (checked on the raw bytes of the database and its WAL), key rotation, and token
refreshes racing across real processes (``multiprocessing``, spawn)."""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.klaviyo.connections import (
    ENCRYPTION_KEY_ENV,
    Connection,
    ConnectionState,
    ConnectionStore,
    EncryptionKeyError,
    PendingAuthorization,
    TokenSet,
    generate_key,
)
from connectors.klaviyo.errors import ConnectionNotFound, ConnectionRemoved, OAuthCallbackError

SCOPES = ("accounts:read", "lists:read", "lists:write")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    """A clock tests move by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def tokens(tag: str = "", expires_in: float = 3600, now: datetime | None = None) -> TokenSet:
    """Fresh random tokens (the tag makes them easy to tell apart in failures)."""
    return TokenSet(
        access_token=f"at-{tag}-{secrets.token_urlsafe(24)}",
        refresh_token=f"rt-{tag}-{secrets.token_urlsafe(24)}",
        expires_at=(now or datetime.now(UTC)) + timedelta(seconds=expires_in),
        scopes=SCOPES,
    )


@pytest.fixture
def key() -> str:
    """A fresh encryption key."""
    return generate_key()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the store lives (its parent does not exist yet: the store creates it)."""
    return tmp_path / "state" / "state.db"


@pytest.fixture
def clock() -> Clock:
    """The store's clock."""
    return Clock()


@pytest.fixture
def store(db_path: Path, key: str, clock: Clock) -> Iterator[ConnectionStore]:
    """A store on a fresh file."""
    with ConnectionStore(db_path, key, clock=clock) as opened:
        yield opened


# ---------------------------------------------------------------------------- values


def test_token_sets_hide_secrets_and_know_when_they_expire() -> None:
    ts = TokenSet("access-SECRET", "refresh-SECRET", T0, ["lists:read", "accounts:read", "lists:read"])
    assert "SECRET" not in repr(ts) and "SECRET" not in str(ts)
    assert ts.scopes == ("accounts:read", "lists:read")
    assert TokenSet("a", "r", T0, "b:read a:read").scopes == ("a:read", "b:read")
    assert ts.expires_within(60, now=T0 - timedelta(seconds=30))
    assert not ts.expires_within(60, now=T0 - timedelta(seconds=90))
    assert ts.expires_within(0, now=T0), "expired exactly at expires_at"
    berlin = TokenSet("a", "r", datetime.fromisoformat("2026-03-01T13:00:00+01:00"))
    assert berlin.expires_at == T0 and berlin.expires_at.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        TokenSet("a", "r", datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        TokenSet("", "r", T0)


def test_pending_authorizations_and_connections_hide_secrets(store: ConnectionStore) -> None:
    pending = store.create_pending_authorization("shop-1", "verifier-SECRET", "https://app/cb")
    assert "verifier-SECRET" not in repr(pending)
    store.save_connection("shop-1", "KL1", tokens("x"), ConnectionState.ACTIVE)
    store.set_webhook_secret("shop-1", "whsec-SECRET-0123456789")
    text = repr(store.require("shop-1")) + repr(store)
    assert "SECRET" not in text and "at-x" not in text and "rt-x" not in text


# ---------------------------------------------------------------------------- OAuth state


def test_pending_authorization_is_single_use(store: ConnectionStore, clock: Clock) -> None:
    pending = store.create_pending_authorization("shop-1", "v" * 64, "https://app/cb", ttl_seconds=600)
    assert len(pending.state) >= 43 and pending.expires_at == T0 + timedelta(seconds=600)
    other = store.create_pending_authorization("shop-1", "w" * 64, "https://app/cb")
    assert other.state != pending.state

    clock.advance(599)
    consumed = store.consume_pending_authorization(pending.state)
    assert consumed == PendingAuthorization(
        pending.state, "shop-1", "v" * 64, "https://app/cb", T0, pending.expires_at
    )
    with pytest.raises(OAuthCallbackError) as again:
        store.consume_pending_authorization(pending.state)
    assert again.value.reason == "invalid_state" and "start connecting" in again.value.user_message
    assert store.consume_pending_authorization(other.state).code_verifier == "w" * 64


@pytest.mark.parametrize("state", ["", "nope", "x" * 43])
def test_unknown_state_is_invalid(store: ConnectionStore, state: str) -> None:
    with pytest.raises(OAuthCallbackError) as caught:
        store.consume_pending_authorization(state)
    assert caught.value.reason == "invalid_state"


def test_expired_state_is_refused_and_deleted(store: ConnectionStore, clock: Clock) -> None:
    pending = store.create_pending_authorization("shop-1", "v" * 64, "https://app/cb", ttl_seconds=60)
    clock.advance(60)
    with pytest.raises(OAuthCallbackError) as caught:
        store.consume_pending_authorization(pending.state)
    assert caught.value.reason == "expired_state" and "expired" in caught.value.user_message
    with pytest.raises(OAuthCallbackError) as again:
        store.consume_pending_authorization(pending.state)
    assert again.value.reason == "invalid_state"


def test_abandoned_authorizations_are_purged(store: ConnectionStore, db_path: Path, clock: Clock) -> None:
    for _ in range(3):
        store.create_pending_authorization("shop-1", "v" * 64, "https://app/cb", ttl_seconds=60)
    clock.advance(120)
    store.create_pending_authorization("shop-2", "v" * 64, "https://app/cb")
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("select recart_account_id from pending_authorizations").fetchall() == [("shop-2",)]


def test_racing_callbacks_consume_a_state_once(store: ConnectionStore) -> None:
    pending = store.create_pending_authorization("shop-1", "v" * 64, "https://app/cb")
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def callback() -> None:
        start.wait()
        try:
            store.consume_pending_authorization(pending.state)
            outcomes.append("won")
        except OAuthCallbackError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=callback) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["invalid_state"] * 7 + ["won"]


# ---------------------------------------------------------------------------- lifecycle


def test_connection_lifecycle(store: ConnectionStore, clock: Clock) -> None:
    first = tokens("1", now=T0)
    saved = store.save_connection("shop-1", "KL1", first, ConnectionState.ACTIVE)
    assert saved == Connection(
        recart_account_id="shop-1",
        klaviyo_account_id="KL1",
        state=ConnectionState.ACTIVE,
        state_reason=None,
        granted_scopes=SCOPES,
        created_at=T0,
        updated_at=T0,
        access_token_expires_at=first.expires_at,
        token_version=1,
        last_refreshed_at=None,
        has_webhook_secret=False,
    )
    assert store.get("shop-1") == saved == store.require("shop-1")
    assert store.tokens("shop-1") == first

    clock.advance(10)
    off = store.set_state("shop-1", ConnectionState.INACTIVE, "switched off by the shop")
    assert (off.state, off.state_reason, off.updated_at, off.token_version) == (
        ConnectionState.INACTIVE,
        "switched off by the shop",
        T0 + timedelta(seconds=10),
        1,
    )
    assert store.tokens("shop-1") == first, "an inactive connection keeps its tokens (to revoke them later)"
    reauth = store.set_state("shop-1", ConnectionState.NEEDS_REAUTH, "missing scope: lists:write")
    assert reauth.state is ConnectionState.NEEDS_REAUTH

    clock.advance(10)
    second = tokens("2", now=clock.now)
    reconnected = store.save_connection("shop-1", "KL1", second, ConnectionState.ACTIVE)
    assert reconnected.created_at == T0 and reconnected.updated_at == T0 + timedelta(seconds=20)
    assert reconnected.state is ConnectionState.ACTIVE and reconnected.state_reason is None
    assert reconnected.token_version == 2
    assert store.tokens("shop-1") == second

    store.set_webhook_secret("shop-1", "whsec-0123456789abcdef", "01HWEBHOOK")
    removed = store.wipe_secrets("shop-1", reason="revoked at Klaviyo")
    assert removed.state is ConnectionState.REMOVED and removed.state_reason == "revoked at Klaviyo"
    assert removed.access_token_expires_at is None and not removed.has_webhook_secret
    assert removed.token_version == 3, "a wipe is a token write: in-flight refreshes lose their CAS"
    with pytest.raises(ConnectionRemoved):
        store.tokens("shop-1")
    assert store.webhook_secret("shop-1") is None
    with pytest.raises(ConnectionRemoved):
        store.set_state("shop-1", ConnectionState.ACTIVE)
    with pytest.raises(ConnectionRemoved):
        store.replace_tokens("shop-1", tokens("late"), expected_version=3)
    with pytest.raises(ConnectionRemoved):
        store.set_webhook_secret("shop-1", "whsec-0123456789abcdef")

    revived = store.save_connection("shop-1", "KL1", tokens("3"), ConnectionState.ACTIVE)
    assert revived.state is ConnectionState.ACTIVE and revived.created_at == T0

    kinds = [event["kind"] for event in store.history("shop-1")]
    assert kinds == [
        "connected",
        "state_changed",
        "state_changed",
        "reconnected",
        "webhook_secret_set",
        "secrets_wiped",
        "reconnected",
    ]
    changed = store.history("shop-1")[1]
    assert changed["at"] == T0 + timedelta(seconds=10)
    assert changed["detail"] == {"from": "active", "to": "inactive", "reason": "switched off by the shop"}

    store.delete("shop-1")
    assert store.get("shop-1") is None
    with pytest.raises(ConnectionNotFound):
        store.require("shop-1")
    with pytest.raises(ConnectionNotFound):
        store.tokens("shop-1")
    assert store.history("shop-1")[-1]["kind"] == "deleted"
    store.delete("shop-1")  # deleting twice is harmless


def test_set_state_removed_wipes_secrets(store: ConnectionStore) -> None:
    store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    store.set_webhook_secret("shop-1", "whsec-0123456789abcdef")
    removed = store.set_state("shop-1", ConnectionState.REMOVED, "uninstalled")
    assert removed.state is ConnectionState.REMOVED and not removed.has_webhook_secret
    with pytest.raises(ConnectionRemoved):
        store.tokens("shop-1")


def test_unknown_accounts_raise_not_found(store: ConnectionStore) -> None:
    for call in (
        lambda: store.require("ghost"),
        lambda: store.tokens("ghost"),
        lambda: store.set_state("ghost", ConnectionState.INACTIVE),
        lambda: store.replace_tokens("ghost", tokens(), expected_version=1),
        lambda: store.wipe_secrets("ghost"),
        lambda: store.set_webhook_secret("ghost", "whsec-0123456789abcdef"),
    ):
        with pytest.raises(ConnectionNotFound, match="ghost"):
            call()
    assert store.get("ghost") is None and store.webhook_secret("ghost") is None


def test_save_get_list_and_filter(store: ConnectionStore) -> None:
    store.save_connection("shop-c", "KLC", tokens(), ConnectionState.ACTIVE)
    store.save_connection("shop-a", "KLA", tokens(), ConnectionState.NEEDS_REAUTH, "missing scope")
    store.save_connection("shop-b", None, tokens(), ConnectionState.INACTIVE)
    store.save_connection("shop-d", "KLD", tokens(), ConnectionState.ACTIVE)
    store.wipe_secrets("shop-d")

    assert [c.recart_account_id for c in store.list()] == ["shop-a", "shop-b", "shop-c", "shop-d"]
    assert [c.recart_account_id for c in store.list([ConnectionState.ACTIVE])] == ["shop-c"]
    active_or_reauth = store.list({ConnectionState.ACTIVE, ConnectionState.NEEDS_REAUTH})
    assert [c.recart_account_id for c in active_or_reauth] == ["shop-a", "shop-c"]
    assert [c.recart_account_id for c in store.list(["removed"])] == ["shop-d"]  # type: ignore[list-item]
    assert store.list([]) == []
    assert store.get("shop-a").state_reason == "missing scope"  # type: ignore[union-attr]
    assert store.get("shop-b").klaviyo_account_id is None  # type: ignore[union-attr]


def test_save_refuses_removed_state(store: ConnectionStore) -> None:
    with pytest.raises(ValueError, match="removed"):
        store.save_connection("shop-1", "KL1", tokens(), ConnectionState.REMOVED)


def test_webhook_secrets_per_account(store: ConnectionStore) -> None:
    store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    store.save_connection("shop-2", "KL2", tokens(), ConnectionState.ACTIVE)
    assert store.webhook_secret("shop-1") is None
    store.set_webhook_secret("shop-1", "secret-one-0123456789", "01HW1")
    store.set_webhook_secret("shop-2", "secret-two-0123456789")
    assert store.webhook_secret("shop-1") == ("secret-one-0123456789", "01HW1")
    assert store.webhook_secret("shop-2") == ("secret-two-0123456789", None)
    assert store.require("shop-1").has_webhook_secret
    assert store.find_by_klaviyo_account("KL1").recart_account_id == "shop-1"  # type: ignore[union-attr]
    assert store.find_by_klaviyo_account("KL9") is None
    assert store.find_by_webhook_id("01HW1").recart_account_id == "shop-1"  # type: ignore[union-attr]
    assert store.find_by_webhook_id("nope") is None

    # Reconnecting to the same Klaviyo account keeps the webhook; to another one drops it.
    store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    assert store.webhook_secret("shop-1") == ("secret-one-0123456789", "01HW1")
    store.save_connection("shop-2", "KL-OTHER", tokens(), ConnectionState.ACTIVE)
    assert store.webhook_secret("shop-2") is None and not store.require("shop-2").has_webhook_secret


def test_find_by_klaviyo_account_prefers_the_active_connection(store: ConnectionStore, clock: Clock) -> None:
    store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    clock.advance(1)
    store.save_connection("shop-2", "KL1", tokens(), ConnectionState.INACTIVE)
    assert store.find_by_klaviyo_account("KL1").recart_account_id == "shop-1"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- compare-and-swap


def test_replace_tokens_is_compare_and_swap(store: ConnectionStore, clock: Clock) -> None:
    store.save_connection("shop-1", "KL1", tokens("old"), ConnectionState.ACTIVE)
    version = store.require("shop-1").token_version
    clock.advance(5)
    newer = TokenSet("at-new", "rt-new", T0 + timedelta(hours=2), ("accounts:read",))
    assert store.replace_tokens("shop-1", newer, expected_version=version) is True
    after = store.require("shop-1")
    assert after.token_version == version + 1
    assert after.last_refreshed_at == T0 + timedelta(seconds=5) == after.updated_at
    assert after.access_token_expires_at == newer.expires_at and after.granted_scopes == ("accounts:read",)

    stale = TokenSet("at-stale", "rt-stale", T0 + timedelta(hours=3))
    assert store.replace_tokens("shop-1", stale, expected_version=version) is False
    assert store.tokens("shop-1") == newer and store.require("shop-1") == after
    assert [e["kind"] for e in store.history("shop-1")] == ["connected", "refreshed"]
    assert store.history("shop-1")[1]["detail"]["token_version"] == version + 1


# ---------------------------------------------------------------------------- encryption at rest


def _raw_bytes(db_path: Path) -> bytes:
    """Everything SQLite has on disk for this database: the file, its WAL and shared memory."""
    return b"".join(
        path.read_bytes()
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"))
        if path.exists()
    )


def test_no_secret_reaches_the_file_wal_or_log(
    db_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    access, refresh = f"ACCESS-{secrets.token_hex(16)}", f"REFRESH-{secrets.token_hex(16)}"
    verifier, webhook_secret = f"VERIFIER-{secrets.token_hex(16)}", f"WHSEC-{secrets.token_hex(16)}"
    refreshed_access, refreshed_refresh = (
        f"ACCESS2-{secrets.token_hex(16)}",
        f"REFRESH2-{secrets.token_hex(16)}",
    )
    plaintexts = [access, refresh, verifier, webhook_secret, refreshed_access, refreshed_refresh]

    store = ConnectionStore(db_path, key)
    pending = store.create_pending_authorization("shop-plain", verifier, "https://app/cb")
    expires = datetime.now(UTC) + timedelta(hours=1)
    store.save_connection("shop-plain", "KLPLAIN", TokenSet(access, refresh, expires), ConnectionState.ACTIVE)
    store.set_webhook_secret("shop-plain", webhook_secret, "01HWPLAIN")
    store.replace_tokens(
        "shop-plain", TokenSet(refreshed_access, refreshed_refresh, expires), expected_version=1
    )
    store.create_pending_authorization("shop-plain", verifier, "https://app/cb")

    wal = Path(f"{db_path}-wal")
    assert wal.exists() and wal.stat().st_size > 0, "WAL mode: the writes are in the -wal file"
    raw = _raw_bytes(db_path)
    assert b"shop-plain" in raw and b"KLPLAIN" in raw, "sanity: we are reading the right files"
    for secret in [*plaintexts, pending.state]:
        assert secret.encode() not in raw, f"{secret[:8]}… found in the database files"
    assert store.tokens("shop-plain").access_token == refreshed_access

    store.close()  # checkpoints the WAL into the main file
    raw = _raw_bytes(db_path)
    assert b"KLPLAIN" in raw
    for secret in plaintexts:
        assert secret.encode() not in raw
    for secret in [*plaintexts, key]:
        assert secret not in caplog.text
    assert "shop-plain" in caplog.text, "sanity: the store does log (without secrets)"


def test_file_is_private_to_its_owner(store: ConnectionStore, db_path: Path) -> None:
    assert db_path.stat().st_mode & 0o777 == 0o600


def test_a_ciphertext_moved_to_another_account_does_not_open(store: ConnectionStore, db_path: Path) -> None:
    store.save_connection("shop-1", "KL1", tokens("one"), ConnectionState.ACTIVE)
    store.save_connection("shop-2", "KL2", tokens("two"), ConnectionState.ACTIVE)
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "update connections set access_token_enc ="
            " (select access_token_enc from connections where recart_account_id = 'shop-1')"
            " where recart_account_id = 'shop-2'"
        )
    with pytest.raises(EncryptionKeyError, match="another record"):
        store.tokens("shop-2")
    assert store.tokens("shop-1").access_token.startswith("at-one")


def test_missing_or_malformed_key_gives_a_clear_error(db_path: Path) -> None:
    with pytest.raises(EncryptionKeyError) as missing:
        ConnectionStore.from_env({"RECART_STATE_DB": str(db_path)})
    message = str(missing.value)
    assert ENCRYPTION_KEY_ENV in message and "Fernet.generate_key()" in message
    with pytest.raises(EncryptionKeyError, match=ENCRYPTION_KEY_ENV):
        ConnectionStore(db_path, " , ")
    with pytest.raises(EncryptionKeyError) as malformed:
        ConnectionStore(db_path, f"{generate_key()},not-a-real-key")
    assert "#2" in str(malformed.value) and "not-a-real-key" not in str(malformed.value)


def test_from_env(tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere" / "state.db"
    with ConnectionStore.from_env({"RECART_STATE_DB": str(path), ENCRYPTION_KEY_ENV: key}) as store:
        store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    assert path.exists()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENCRYPTION_KEY_ENV, key)
    monkeypatch.delenv("RECART_STATE_DB", raising=False)
    with ConnectionStore.from_env() as store:
        assert store.path == Path(".state/state.db")
    assert (tmp_path / ".state" / "state.db").exists()


def test_wrong_key_is_refused_when_the_store_opens(db_path: Path, key: str) -> None:
    with ConnectionStore(db_path, key) as store:
        store.save_connection("shop-1", "KL1", tokens(), ConnectionState.ACTIVE)
    with pytest.raises(EncryptionKeyError) as caught:
        ConnectionStore(db_path, generate_key())
    assert ENCRYPTION_KEY_ENV in str(caught.value) and "another key" in str(caught.value)
    assert key not in str(caught.value)


def test_key_rotation(db_path: Path) -> None:
    old, new = generate_key(), generate_key()
    written = tokens("old-key")
    with ConnectionStore(db_path, old) as store:
        store.save_connection("shop-1", "KL1", written, ConnectionState.ACTIVE)
        store.set_webhook_secret("shop-1", "whsec-0123456789abcdef")
        pending = store.create_pending_authorization("shop-2", "verifier-" + "v" * 50, "https://app/cb")

    # New key first: everything written with the old key still reads; new writes use the new key.
    with ConnectionStore(db_path, f"{new}, {old}") as store:
        assert store.tokens("shop-1") == written
        store.save_connection("shop-3", "KL3", tokens("new-key"), ConnectionState.ACTIVE)
    with ConnectionStore(db_path, old) as store, pytest.raises(EncryptionKeyError):
        store.tokens("shop-3")  # proves the first key encrypts

    # Re-encrypt with the primary key, then the old key can be dropped.
    with ConnectionStore(db_path, [new, old]) as store:
        assert store.rotate_encryption() == 6  # 2 × 2 tokens, a webhook secret, a verifier
    with ConnectionStore(db_path, new) as store:
        assert store.tokens("shop-1") == written
        assert store.webhook_secret("shop-1") == ("whsec-0123456789abcdef", None)
        assert store.consume_pending_authorization(pending.state).code_verifier == "verifier-" + "v" * 50
        assert store.tokens("shop-3").access_token.startswith("at-new-key")
    with pytest.raises(EncryptionKeyError):
        ConnectionStore(db_path, old)


def test_schema_is_created_once_and_reopening_keeps_data(db_path: Path, key: str) -> None:
    for _ in range(3):
        with ConnectionStore(db_path, key) as store:
            store.create_pending_authorization("shop-1", "v" * 64, "https://app/cb")
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("select version from schema_version").fetchall() == [(1,)]
        assert raw.execute("pragma journal_mode").fetchone() == ("wal",)
        assert raw.execute("select count(*) from pending_authorizations").fetchone() == (3,)


def test_push_settings_belong_to_the_klaviyo_account_they_were_chosen_in(
    db_path: Path, key: str, clock: Clock
) -> None:
    from connectors.klaviyo.push_settings import PushSettings

    with ConnectionStore(db_path, key, clock=clock) as store:
        store.save_connection("shop-1", "K1", tokens(), ConnectionState.ACTIVE)
        store.set_push_settings(PushSettings("shop-1", email_list_id="L1"))
    # A store from before the column existed: its settings have no owner, and stay the shop's.
    with sqlite3.connect(db_path) as raw:
        raw.execute("alter table push_settings drop column klaviyo_account_id")
    clock.advance(60)
    with ConnectionStore(db_path, key, clock=clock) as store:
        first = store.push_settings("shop-1")
        assert first is not None and first.email_list_id == "L1"
        store.set_push_settings(first)  # saved again: now owned by K1, enabled_since kept
        assert store.push_settings("shop-1").enabled_since == first.enabled_since  # type: ignore[union-attr]

        store.save_connection("shop-1", "K2", tokens("new"), ConnectionState.ACTIVE)  # switched account
        assert store.push_settings("shop-1") is None
        clock.advance(60)
        store.set_push_settings(PushSettings("shop-1", email_list_id="L2"))
        second = store.push_settings("shop-1")
        assert second is not None and second.email_list_id == "L2"
        # The push starts over in K2: opt-outs from before it are not K2's business.
        assert second.enabled_since == clock.now and first.enabled_since == clock.now - timedelta(seconds=120)


def test_closed_store_refuses_work(db_path: Path, key: str) -> None:
    store = ConnectionStore(db_path, key)
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.get("shop-1")


# ---------------------------------------------------------------------------- threads


def test_threads_share_one_store(store: ConnectionStore) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(20):
                account = f"shop-{worker}-{i % 3}"
                store.save_connection(account, f"KL{worker}", tokens(), ConnectionState.ACTIVE)
                store.set_state(account, ConnectionState.INACTIVE, f"round {i}")
                assert store.require(account).state is ConnectionState.INACTIVE
                store.tokens(account)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list()) == 18


def test_refresh_lock_excludes_threads_and_is_reentrant(store: ConnectionStore) -> None:
    inside: list[int] = []
    overlaps: list[bool] = []

    def hold(n: int) -> None:
        for _ in range(5):
            with store.refresh_lock("shop-1"):
                inside.append(n)
                overlaps.append(len(inside) > 1)
                time.sleep(0.002)
                with store.refresh_lock("shop-1"):  # re-entrant in one thread
                    pass
                inside.remove(n)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 20 and not any(overlaps)
    with store.refresh_lock("shop-1"), store.refresh_lock("shop-2", timeout=0.1):
        pass  # locks are per connection


def test_refresh_lock_times_out_across_stores(store: ConnectionStore, db_path: Path, key: str) -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with ConnectionStore(db_path, key) as other, other.refresh_lock("shop-1"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="shop-1"), store.refresh_lock("shop-1", timeout=0.2):
            pass
        assert 0.15 < time.monotonic() - started < 2
    finally:
        release.set()
        thread.join()
    with store.refresh_lock("shop-1", timeout=1):
        pass


# ---------------------------------------------------------------------------- processes
# Workers run in spawned interpreters: module-level functions, results (or a traceback) via a queue.


def _hold_lock_worker(db_path: str, key: str, account: str, held: Any, release: Any) -> None:
    with ConnectionStore(db_path, key) as store, store.refresh_lock(account):
        held.set()
        release.wait(30)


def _refresh_worker(
    db_path: str, key: str, account: str, worker: int, rounds: int, start: Any, results: Any
) -> None:
    """Refresh unconditionally ``rounds`` times, each inside the lock: read, "call Klaviyo", write."""
    try:
        out = []
        with ConnectionStore(db_path, key) as store:
            start.wait(60)
            for i in range(rounds):
                with store.refresh_lock(account, timeout=60):
                    version = store.require(account).token_version
                    current = store.tokens(account)
                    time.sleep(0.003)  # the token endpoint's round trip, while holding the lock
                    new = tokens(f"w{worker}r{i}")
                    ok = store.replace_tokens(account, new, expected_version=version)
                    out.append(
                        {
                            "ok": ok,
                            "version": version + 1,
                            "used_refresh_token": current.refresh_token,
                            "access_token": new.access_token,
                            "refresh_token": new.refresh_token,
                        }
                    )
        results.put(("ok", worker, out))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))


def _refresh_if_stale_worker(
    db_path: str, key: str, account: str, worker: int, start: Any, results: Any
) -> None:
    """What the real refresher does: inside the lock, re-read and skip if another process refreshed."""
    try:
        with ConnectionStore(db_path, key) as store:
            start.wait(60)
            with store.refresh_lock(account, timeout=60):
                version = store.require(account).token_version
                if not store.tokens(account).expires_within(300):
                    results.put(("ok", worker, "skipped"))
                    return
                time.sleep(0.05)
                ok = store.replace_tokens(account, tokens(f"w{worker}"), expected_version=version)
                results.put(("ok", worker, "refreshed" if ok else "lost"))
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))


def _collect(results: Any, processes: list[Any]) -> dict[int, Any]:
    collected: dict[int, Any] = {}
    for _ in processes:
        status, worker, value = results.get(timeout=120)
        assert status == "ok", f"worker {worker} failed:\n{value}"
        collected[worker] = value
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    return collected


def test_two_processes_refreshing_never_lose_the_newest_token(db_path: Path, key: str) -> None:
    workers, rounds = 3, 15
    with ConnectionStore(db_path, key) as store:
        store.save_connection("shop-1", "KL1", tokens("initial"), ConnectionState.ACTIVE)
        initial_version = store.require("shop-1").token_version
        initial_refresh = store.tokens("shop-1").refresh_token

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(workers), ctx.Queue()
    processes = [
        ctx.Process(target=_refresh_worker, args=(str(db_path), key, "shop-1", n, rounds, start, results))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    writes = [write for out in _collect(results, processes).values() for write in out]

    assert len(writes) == workers * rounds
    assert all(write["ok"] for write in writes), "no compare-and-swap ever lost: the lock serialised them"
    by_version = sorted(writes, key=lambda write: write["version"])
    assert [w["version"] for w in by_version] == list(
        range(initial_version + 1, initial_version + 1 + len(writes))
    )
    # Each refresh used the refresh token the previous one wrote: none was ever read stale or lost.
    used = [w["used_refresh_token"] for w in by_version]
    assert used == [initial_refresh] + [w["refresh_token"] for w in by_version[:-1]]
    with ConnectionStore(db_path, key) as store:
        final = store.require("shop-1")
        assert final.token_version - initial_version == workers * rounds
        newest = store.tokens("shop-1")
        assert (newest.access_token, newest.refresh_token) == (
            by_version[-1]["access_token"],
            by_version[-1]["refresh_token"],
        )
        assert [e["kind"] for e in store.history("shop-1")].count("refreshed") == workers * rounds


def test_processes_starting_together_refresh_only_once(db_path: Path, key: str) -> None:
    workers = 4
    with ConnectionStore(db_path, key) as store:
        store.save_connection("shop-1", "KL1", tokens("initial", expires_in=30), ConnectionState.ACTIVE)
        initial_version = store.require("shop-1").token_version

    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(workers), ctx.Queue()
    processes = [
        ctx.Process(target=_refresh_if_stale_worker, args=(str(db_path), key, "shop-1", n, start, results))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(_collect(results, processes).values())
    assert outcomes == ["refreshed"] + ["skipped"] * (workers - 1)
    with ConnectionStore(db_path, key) as store:
        assert store.require("shop-1").token_version == initial_version + 1
        assert not store.tokens("shop-1").expires_within(300)


def test_refresh_lock_times_out_against_another_process(db_path: Path, key: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    process = ctx.Process(target=_hold_lock_worker, args=(str(db_path), key, "shop-1", held, release))
    with ConnectionStore(db_path, key) as store:
        process.start()
        try:
            assert held.wait(60), "the other process never took the lock"
            with pytest.raises(TimeoutError, match="'shop-1'"), store.refresh_lock("shop-1", timeout=0.3):
                pass
            with store.refresh_lock("shop-2", timeout=1):
                pass  # other connections are not blocked
        finally:
            release.set()
            process.join(30)
        assert process.exitcode == 0
        with store.refresh_lock("shop-1", timeout=5):
            pass


def test_a_coroutine_cancelled_while_waiting_for_a_lock_lets_asyncio_run_return(
    store: ConnectionStore,
) -> None:
    """held_in_own_thread: cancelling a push that waits for the push lock (Dagster terminating the
    run) returns at once, instead of when the lock is free or its timeout passes."""
    import asyncio

    from connectors.klaviyo.oauth import held_in_own_thread

    async def wait_then_cancel() -> None:
        async def take() -> None:
            async with held_in_own_thread(lambda: store.push_lock("shop-1", timeout=60)):
                raise AssertionError("the lock is held elsewhere: never entered")

        task = asyncio.create_task(take())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with store.push_lock("shop-1"):  # another push holds it throughout
        started = time.monotonic()
        asyncio.run(wait_then_cancel())
        assert time.monotonic() - started < 5
