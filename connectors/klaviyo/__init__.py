"""The only code that speaks Klaviyo's protocol: OAuth, the connection store, the API client with its
rate limiter and retries, and webhook signatures. No Dagster imports here.

Modules: ``config`` (settings, revision, required scopes), ``errors`` (by meaning),
``connections`` (encrypted SQLite connection store and states), ``oauth`` (PKCE authorize,
callback, refresh, revoke; OAuth credentials for the client), ``ratelimit`` (per account and
tier, burst and steady windows), ``client`` (async JSON:API client and every operation),
``models`` (typed records), ``filters`` (filter builder), ``webhooks`` (signature verification).
"""
