"""Console pages of health at a glance (per webhook; the queue and workers
for operators) and the event catalogue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from outbox_worker import webhooks
from outbox_worker.api.deps import database
from outbox_worker.console import charts, data
from outbox_worker.console.session import Viewer
from outbox_worker.console.web import ConsoleRoute, Page, signed_in
from outbox_worker.settings import Settings

router = APIRouter(route_class=ConsoleRoute)
SignedIn = Annotated[Viewer, Depends(signed_in)]


def _rate(bucket: data.Bucket) -> str:
    rate = bucket.success_rate
    return "no attempts" if rate is None else f"{rate:.1%}"


def _windows(
    hook: webhooks.Webhook, found: dict[data.Window, dict[Any, data.Health]]
) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = []
    for window, per_hook in found.items():
        health = per_hook.get(hook.id)
        if health is None:
            shown.append({"name": window.name, "total": None})
            continue
        label = f"{hook.url}, {window.name}"
        shown.append(
            {
                "name": window.name,
                "total": health.total,
                "rate": _rate(health.total),
                "bars": charts.success_bars(health.buckets, f"Attempts and 2xx answers, {label}"),
                "lines": charts.latency_lines(health.buckets, f"p50 and p99 duration, {label}"),
            }
        )
    return shown


@router.get("/health")
async def health_page(request: Request, viewer: SignedIn, notice: str = "") -> Response:
    settings: Settings = request.app.state.outbox_settings
    now = datetime.now(UTC)
    context: dict[str, Any] = {"notice": notice, "title": "Health", "rows": [], "operator": None}
    async with database(request).transaction() as conn:
        if viewer.acting is not None:
            hooks = await webhooks.list_webhooks_async(conn, viewer.acting)
            found = {w: await data.health(conn, viewer.acting, w, now) for w in (data.HOUR, data.DAY)}
            disable_after = timedelta(seconds=settings.disable_after)
            context["rows"] = [
                {
                    "hook": hook,
                    "windows": _windows(hook, found),
                    "disables_at": hook.failing_since + disable_after
                    if hook.enabled and hook.failing_since
                    else None,
                }
                for hook in hooks
            ]
        if viewer.operator:
            stats, backlog = await data.queue(conn)
            context["operator"] = {
                "stats": stats,
                "backlog": backlog,
                "workers": await data.alive_workers(conn),
                "owners": sorted({row["owner_id"] for row in stats}),
                "totals": {
                    k: sum(r[k] for r in stats) for k in ("pending", "retrying", "in_flight", "failed")
                },
                "oldest": max((r["oldest_pending_seconds"] or 0 for r in stats), default=0),
            }
    return Page(request, viewer).render("health.html", **context)


@router.get("/events")
async def events_page(request: Request, viewer: SignedIn) -> Response:
    async with database(request).transaction() as conn:
        types = await data.event_types(conn)
    return Page(request, viewer).render("events.html", types=types, title="Event types")
