"""Metrics: ``GET /api/metrics`` (cursor pages of up to 200, no ``page[size]``), ``GET /api/metrics/{id}``
and the metric's flow triggers.

The sandbox records no trigger linkage between flows and metrics, so ``flow-triggers`` is always
an empty relationship (and ``include=flow-triggers`` adds nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klaviyo_sandbox.app import handler
from klaviyo_sandbox.errors import find_or_404
from klaviyo_sandbox.filters import matches
from klaviyo_sandbox.jsonapi import Context, iso, paginate, relationship, resource, single, sort_key_value
from klaviyo_sandbox.store import Account, Metric

METRICS_PER_PAGE = 200


def metric_attributes(metric: Metric) -> dict[str, Any]:
    """The attributes of a metric as Klaviyo renders them."""
    return {
        "name": metric.name,
        "created": iso(metric.created),
        "updated": iso(metric.updated),
        "integration": dict(metric.integration) if metric.integration else None,
    }


def render_metric(ctx: Context, metric: Metric) -> dict[str, Any]:
    """A metric resource object; ``flow-triggers`` carries data only when included."""
    trigger = relationship(
        ctx,
        f"/api/metrics/{metric.id}/relationships/flow-triggers/",
        f"/api/metrics/{metric.id}/flow-triggers/",
    )
    if "flow-triggers" in ctx.include and ctx.op.path.startswith("/api/metrics"):
        trigger = {"data": [], **trigger}
    return resource(
        ctx,
        "metric",
        metric.id,
        metric_attributes(metric),
        relationships={"flow-triggers": trigger},
        path="/api/metrics",
    )


def get_account_metric(account: Account, metric_id: str) -> Metric:
    """The metric with this id in the caller's account, or 404."""
    return find_or_404(account.metrics, metric_id, "Metric")


def _metric_getter(metric: Metric) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        if name.startswith("integration."):
            return (metric.integration or {}).get(name.split(".", 1)[1])
        return getattr(metric, name, None)

    return get


@handler("get_metrics")
def get_metrics(ctx: Context) -> tuple[int, Any]:
    """``GET /api/metrics``: every metric of the account, filtered by integration name/category."""
    items = [m for m in ctx.account.metrics.values() if matches(ctx.filters, _metric_getter(m))]
    return 200, paginate(
        ctx,
        items,
        lambda m: (sort_key_value(m.created), m.id),
        lambda m: render_metric(ctx, m),
        default_size=METRICS_PER_PAGE,
        included=lambda page: [],
    )


@handler("get_metric")
def get_metric(ctx: Context) -> tuple[int, Any]:
    """``GET /api/metrics/{id}``."""
    metric = get_account_metric(ctx.account, ctx.path_params["id"])
    return 200, single(ctx, render_metric(ctx, metric), [])


@handler("get_flows_triggered_by_metric")
def get_flows_triggered_by_metric(ctx: Context) -> tuple[int, Any]:
    """``GET /api/metrics/{id}/flow-triggers``: none are modelled."""
    get_account_metric(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}


@handler("get_ids_for_flows_triggered_by_metric")
def get_ids_for_flows_triggered_by_metric(ctx: Context) -> tuple[int, Any]:
    """``GET /api/metrics/{id}/relationships/flow-triggers``: none are modelled."""
    get_account_metric(ctx.account, ctx.path_params["id"])
    return 200, {"data": [], "links": {"self": ctx.self_link()}}
