"""Dagster resources wrapping the connector, the connection store and the warehouse."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import dagster as dg
import duckdb

from connectors.klaviyo.client import KlaviyoClient
from connectors.klaviyo.config import KLAVIYO_AUTHORIZE_URL, KLAVIYO_BASE_URL, KlaviyoSettings
from connectors.klaviyo.connections import Connection, ConnectionState, ConnectionStore
from connectors.klaviyo.oauth import KlaviyoOAuth
from warehouse.duckdb_file import read_connection, write_connection


class KlaviyoResource(dg.ConfigurableResource):
    """Klaviyo connections of all shops: the encrypted store, OAuth, and API clients per account."""

    base_url: str = KLAVIYO_BASE_URL
    authorize_url: str = KLAVIYO_AUTHORIZE_URL
    client_id: str
    client_secret: str
    redirect_uri: str = "http://127.0.0.1:8000/oauth/klaviyo/callback"
    state_db: str = ".state/state.db"
    encryption_key: str
    max_concurrency: int = 16

    @classmethod
    def from_env_vars(cls) -> KlaviyoResource:
        """Every setting read from the environment at run time (``dg.EnvVar``): the client secret and
        the encryption key reach the runs without being stored in the Dagster instance's run and job
        snapshots or shown in its UI. The deployment (``definitions.py``) and the demo use it."""
        return cls(
            base_url=dg.EnvVar("KLAVIYO_BASE_URL"),
            authorize_url=dg.EnvVar("KLAVIYO_AUTHORIZE_URL"),
            client_id=dg.EnvVar("KLAVIYO_CLIENT_ID"),
            client_secret=dg.EnvVar("KLAVIYO_CLIENT_SECRET"),
            redirect_uri=dg.EnvVar("KLAVIYO_REDIRECT_URI"),
            state_db=dg.EnvVar("RECART_STATE_DB"),
            encryption_key=dg.EnvVar("RECART_ENCRYPTION_KEY"),
        )

    def settings(self) -> KlaviyoSettings:
        """The connector's settings (base URLs and the OAuth app)."""
        return KlaviyoSettings(
            base_url=self.base_url,
            authorize_url=self.authorize_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            redirect_uri=self.redirect_uri,
        )

    @contextmanager
    def store(self) -> Iterator[ConnectionStore]:
        """The connection store (tokens encrypted at rest)."""
        store = ConnectionStore(self.state_db, self.encryption_key)
        try:
            yield store
        finally:
            store.close()

    @asynccontextmanager
    async def client(self, store: ConnectionStore, recart_account_id: str) -> AsyncIterator[KlaviyoClient]:
        """An API client for one connected account; refuses inactive or broken connections before any call."""
        oauth = KlaviyoOAuth(self.settings(), store)
        async with KlaviyoClient(
            self.settings(), oauth.credentials(recart_account_id), max_concurrency=self.max_concurrency
        ) as client:
            yield client


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file; writes are serialised across processes and kept short."""

    path: str = ".state/warehouse.duckdb"

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection under the cross-process write lock."""
        with write_connection(self.path) as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection (retried while a writer holds the file)."""
        with read_connection(self.path) as conn:
            yield conn


def require_active_connection(store: ConnectionStore, recart_account_id: str) -> Connection:
    """The account's connection when it is active; otherwise a ``dg.Failure`` that says why.

    Inactive, needs-re-authorization and removed connections fail at once with the state and its
    reason, and without retries: the shop has to act first.
    """
    connection = store.get(recart_account_id)
    if connection is None or connection.state != ConnectionState.ACTIVE:
        state = connection.state.value if connection else "not connected"
        reason = (connection.state_reason if connection else None) or ""
        message = f"Recart account {recart_account_id}: Klaviyo connection is {state}. {reason}"
        raise dg.Failure(
            description=message.strip(),
            metadata={"connection_state": state},
            allow_retries=False,
        )
    return connection
