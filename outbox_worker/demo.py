"""``outbox-worker demo``: the whole product in one command, with nothing
installed but Python.

1. A PostgreSQL: a throwaway database on ``OUTBOX_DATABASE_URL``'s server
   when that is set (created here, dropped at the end, nothing else touched),
   else an embedded PostgreSQL (pgserver) in a temporary directory.
2. ``migrate``, and ``outbox.config`` opened to plain-http loopback receivers.
3. A local receiver that verifies both signatures on every request
   (``X-Brutlers-Signature`` and Standard Webhooks) and answers 401 if either
   is wrong; one of its endpoints is flaky and fails each message's first
   attempts, so retries show.
4. Three webhooks of a demo vendor, a tiny shop that writes orders and emits
   ``order.created`` / ``order.status_changed`` in the same transactions, and
   one order that rolls back and so must never arrive.
5. The real worker (:class:`outbox_worker.worker.Worker`), in this process,
   with a short retry schedule; live progress, then a summary, a signed
   request as the receiver saw it, and the SQL to read the delivery log.

Exit status 0 only if every committed event reached every matching webhook
with valid signatures and the rolled-back order never did.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from multidict import CIMultiDict
from psycopg import sql
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from outbox_worker import db, logs, migrate, pooling, signing, webhooks
from outbox_worker.emit import emit_async
from outbox_worker.loopback import serve_on_loopback
from outbox_worker.settings import Settings
from outbox_worker.sql import parse_queries, sql_dir
from outbox_worker.worker import Worker

OWNER = "demo-vendor"
ROLLED_BACK_ORDER = "ord_rolled_back"
TIMEOUT = 25.0


@dataclass
class Hook:
    """One demo webhook and what its receiver endpoint saw."""

    name: str
    events: list[str]
    fail_first: int = 0  # answer 503 to each message's first N attempts
    id: uuid.UUID | None = None
    secret: str = ""
    url: str = ""
    expected: set[str] = field(default_factory=set)  # webhook-ids that must arrive
    arrived: dict[str, tuple[Mapping[str, str], bytes]] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    bad_signatures: int = 0

    def matches(self, event_type: str) -> bool:
        return any(p == "*" or p == event_type or event_type.startswith(p[:-1]) for p in self.events)


def demo_hooks() -> list[Hook]:
    return [
        Hook("crm", ["order.*"]),
        Hook("erp", ["order.created"], fail_first=2),
        Hook("status-board", ["order.status_changed"]),
    ]


class DemoReceiver:
    """The vendor's side: verifies both signatures, as the docs tell receivers to."""

    def __init__(self, hooks: list[Hook], signature_header: str) -> None:
        self.hooks = {h.name: h for h in hooks}
        self.signature_header = signature_header
        self.base_url = ""
        self.rolled_back_seen = False
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app, shutdown_timeout=0.1)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def verify(self, hook: Hook, headers: Mapping[str, str], body: bytes) -> bool:
        hex_ok = signing.verify_body_signature(body, headers.get(self.signature_header, ""), hook.secret)
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return False
        expected = signing.standard_signature(msg_id, int(stamp), body, hook.secret)
        return hex_ok and expected in headers.get("webhook-signature", "").split()

    async def _handle(self, request: web.Request) -> web.Response:
        hook = self.hooks.get(request.match_info["name"])
        if hook is None:
            return web.Response(status=404)
        body = await request.read()
        headers = CIMultiDict(request.headers)  # header names are case-insensitive
        hook.requests += 1
        if not self.verify(hook, headers, body):
            hook.bad_signatures += 1
            return web.Response(status=401, text="invalid signature")
        if json.loads(body)["data"].get("id") == ROLLED_BACK_ORDER:
            self.rolled_back_seen = True
        msg_id = headers["webhook-id"]
        hook.tries[msg_id] = tries = hook.tries.get(msg_id, 0) + 1
        if tries <= hook.fail_first:
            return web.Response(status=503, text="flaky on purpose, try again")
        hook.arrived.setdefault(msg_id, (headers, body))
        return web.Response(text="ok")


# -- the database ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def demo_database(server_url: str | None, keep: bool, say: Callable[[str], None]) -> AsyncIterator[str]:
    """A fresh database for the demo; yields its URL and removes everything on exit."""
    name = f"outbox_demo_{uuid.uuid4().hex[:8]}"
    tmp: Path | None = None
    server: Any = None
    if server_url:
        admin = db.libpq_url(server_url)
        say(f"PostgreSQL: a throwaway database [bold]{name}[/] on OUTBOX_DATABASE_URL's server")
    else:
        from outbox_worker import embedded

        tmp = Path(tempfile.mkdtemp(prefix="outbox-demo-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            admin, server = await asyncio.to_thread(embedded.start, tmp, cleanup=not keep)
        say(f"PostgreSQL: embedded (pgserver) in [bold]{tmp}[/]")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = db.as_url(admin, dbname=name)
    try:
        yield url
    finally:
        if keep:
            psql = "psql"
            if server is not None:
                from pgserver._commands import POSTGRES_BIN_PATH

                psql = str(POSTGRES_BIN_PATH / "psql")
                pgdata = tmp or ""
                stop = (
                    f'{sys.executable} -c "import pgserver; '
                    f"pgserver.get_server('{pgdata}', cleanup_mode='delete').cleanup()\""
                )
                say(f"Kept: the embedded PostgreSQL runs on. Stop and delete it with:\n  {escape(stop)}")
            else:
                drop = f"psql \"{admin}\" -c 'drop database {name}'"
                say(f"Kept: database {name}. Drop it with: {escape(drop)}")
            say(f'Connect with: {escape(psql)} "{escape(url)}"')
        else:
            with contextlib.suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            if server is not None:
                await asyncio.to_thread(server.cleanup)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


# -- the shop -----------------------------------------------------------------------


@functools.cache
def _shop_queries() -> dict[str, str]:
    return parse_queries((sql_dir() / "demo_shop.sql").read_text(encoding="utf-8"))


def shop_sql(name: str) -> str:
    """A statement of ``sql/demo_shop.sql`` (the demo application's own SQL)."""
    return _shop_queries()[name]


async def run_shop(
    url: str, orders: int, emitted: list[tuple[int, str, str]], policy: pooling.Policy
) -> None:
    """Orders and their events, each pair in one transaction; one order rolls back."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await policy.check(conn)  # through a transaction-mode pooler: nothing prepared
        await conn.execute(shop_sql("demo_shop_table"))
        ids = [f"ord_{i:04d}" for i in range(1, orders + 1)]
        for i, order_id in enumerate(ids):
            async with conn.transaction():
                total = 20 + 7.5 * i
                customer = f"cus_{i % 3 + 1}"
                await conn.execute(
                    shop_sql("demo_shop_insert"), {"id": order_id, "customer": customer, "total": total}
                )
                data = {"id": order_id, "customerId": customer, "total": total, "status": "NEW"}
                event_id = await emit_async(conn, OWNER, "order.created", data)
                emitted.append((event_id, "order.created", order_id))
            if i == orders // 2:  # a payment that fails half-way: order and event vanish together
                async with conn.transaction():
                    await conn.execute(
                        shop_sql("demo_shop_insert"),
                        {"id": ROLLED_BACK_ORDER, "customer": "cus_x", "total": 1},
                    )
                    await emit_async(conn, OWNER, "order.created", {"id": ROLLED_BACK_ORDER, "status": "NEW"})
                    raise psycopg.Rollback()
            await asyncio.sleep(0.08)
        for previous, status in (("NEW", "PAID"), ("PAID", "SHIPPED")):
            for order_id in ids:
                async with conn.transaction():
                    await conn.execute(shop_sql("demo_shop_update"), {"id": order_id, "status": status})
                    data = {"id": order_id, "status": status, "previousStatus": previous}
                    event_id = await emit_async(conn, OWNER, "order.status_changed", data)
                    emitted.append((event_id, "order.status_changed", order_id))
                await asyncio.sleep(0.04)


# -- progress -----------------------------------------------------------------------


def _progress(url: str) -> dict[uuid.UUID, dict[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = db.fetch(conn, "demo_progress", {})
    return {r.pop("webhook_id"): r for r in rows}


def progress_table(hooks: list[Hook], state: dict[uuid.UUID, dict[str, int]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("webhook", "subscribed to", "emitted", "delivered", "retrying", "failed", "attempts"):
        table.add_column(
            column,
            justify="left" if column in ("webhook", "subscribed to") else "right",
            no_wrap=column == "webhook",
        )
    for hook in hooks:
        s = state.get(hook.id, {}) if hook.id else {}
        table.add_row(
            hook.name + (" [dim](flaky)[/]" if hook.fail_first else ""),
            ", ".join(hook.events),
            str(len(hook.expected)),
            f"[green]{s.get('delivered', 0)}[/]",
            f"[yellow]{s.get('retrying', 0)}[/]",
            f"[red]{s.get('failed', 0)}[/]",
            str(s.get("attempts", 0)),
        )
    return table


def _done(hooks: list[Hook], state: dict[uuid.UUID, dict[str, int]]) -> bool:
    for hook in hooks:
        s = state.get(hook.id, {}) if hook.id else {}
        if not hook.expected.issubset(hook.arrived) or s.get("retrying", 0) or s.get("queued", 0):
            return False
    return True


# -- the run ------------------------------------------------------------------------


@dataclass
class Result:
    ok: bool
    seconds: float
    events: int
    rolled_back_arrived: bool
    hooks: list[Hook]
    database_url: str
    kept: bool


async def run(
    *, server_url: str | None, keep: bool = False, orders: int = 10, console: Console | None = None,
    as_json: bool = False,
) -> int:  # fmt: skip
    console = console or Console(soft_wrap=True)
    started = time.monotonic()
    quiet = as_json

    def say(text: str) -> None:
        if not quiet:
            console.print(text)

    logs.configure("warning", "console")
    hooks = demo_hooks()
    result: Result | None = None
    async with demo_database(server_url, keep, say) as url:
        await asyncio.to_thread(migrate.upgrade, url)
        with psycopg.connect(url, autocommit=True) as conn:
            db.fetch(conn, "demo_open_config", {})
            settings = Settings(
                database_url=url,
                worker_id="demo-worker",
                allow_http=True,
                allow_private_networks=True,
                poll_interval=0.2,
                retry_schedule=[0.3, 0.8, 1.5],
                retry_jitter=0.1,
                request_timeout=5.0,
                connect_timeout=2.0,
                lease_seconds=30.0,
                shutdown_grace=2.0,
                metrics_port=0,
                log_level="warning",
            )
            receiver = DemoReceiver(hooks, settings.signature_header)
            await receiver.start()
            for hook in hooks:
                hook.url = f"{receiver.base_url}/hooks/{hook.name}"
                created = webhooks.create_webhook(conn, OWNER, hook.url, hook.events)
                hook.id, hook.secret = created.id, created.secret
        say(f"Migrated; receiver on {receiver.base_url}; webhooks: {', '.join(h.name for h in hooks)}")

        worker = Worker(settings)
        worker_task = asyncio.create_task(worker.run(), name="demo-worker")
        emitted: list[tuple[int, str, str]] = []
        shop = asyncio.create_task(run_shop(url, orders, emitted, worker.policy), name="demo-shop")
        state: dict[uuid.UUID, dict[str, int]] = {}
        try:
            with Live(
                progress_table(hooks, state, "Delivering…"), console=console, refresh_per_second=8,
                transient=False, redirect_stderr=False,
            ) if not quiet else contextlib.nullcontext() as live:  # fmt: skip
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.15)
                    if worker_task.done():
                        worker_task.result()
                        raise RuntimeError("the worker stopped unexpectedly")
                    for hook in hooks:
                        hook.expected = {signing.message_id(e) for e, t, _ in emitted if hook.matches(t)}
                    state = await asyncio.to_thread(_progress, url)
                    finished = shop.done() and _done(hooks, state)
                    if live is not None:
                        title = "Delivered" if finished else f"Delivering… {len(emitted)} events emitted"
                        live.update(progress_table(hooks, state, title))
                    if finished:
                        break
                shop.result()
        finally:
            shop.cancel()
            with contextlib.suppress(BaseException):
                await shop
            worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker_task, 10)
            await receiver.stop()
        all_arrived = all(h.expected.issubset(h.arrived) for h in hooks)
        signatures_ok = all(h.bad_signatures == 0 for h in hooks)
        result = Result(
            ok=all_arrived and signatures_ok and not receiver.rolled_back_seen and bool(emitted),
            seconds=time.monotonic() - started,
            events=len(emitted),
            rolled_back_arrived=receiver.rolled_back_seen,
            hooks=hooks,
            database_url=url,
            kept=keep,
        )
        if not quiet:
            console.print()
            report(console, result, state)
    assert result is not None
    result.seconds = time.monotonic() - started
    if as_json:
        print(json.dumps(summary(result), indent=2))
    else:
        console.print(
            ("[bold green]OK[/]" if result.ok else "[bold red]FAILED[/]")
            + f": demo finished in {result.seconds:.1f} s"
            + ("" if keep else "; everything it started is stopped and removed")
        )
    return 0 if result.ok else 1


def summary(result: Result) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "seconds": round(result.seconds, 2),
        "events": result.events,
        "rolled_back_arrived": result.rolled_back_arrived,
        "database_url": result.database_url if result.kept else None,
        "webhooks": [
            {
                "name": h.name,
                "events": h.events,
                "expected": len(h.expected),
                "arrived": len(h.expected & set(h.arrived)),
                "requests": h.requests,
                "bad_signatures": h.bad_signatures,
            }
            for h in result.hooks
        ],
    }


def report(console: Console, result: Result, state: dict[uuid.UUID, dict[str, int]]) -> None:
    table = Table(title="Summary", title_justify="left")
    for column in (
        "webhook",
        "committed events",
        "arrived, verified",
        "requests",
        "retries",
        "failed",
        "bad sig",
    ):
        table.add_column(column, justify="left" if column == "webhook" else "right")
    for h in result.hooks:
        arrived = len(h.expected & set(h.arrived))
        s = state.get(h.id, {}) if h.id else {}
        colour = "green" if arrived == len(h.expected) else "red"
        table.add_row(
            h.name, str(len(h.expected)), f"[{colour}]{arrived}[/]", str(h.requests),
            str(h.requests - len(h.arrived)), str(s.get("failed", 0)), str(h.bad_signatures),
        )  # fmt: skip
    console.print(table)
    console.print(
        ("[green]✓[/]" if not result.rolled_back_arrived else "[red]✗[/]")
        + f" the rolled-back order {ROLLED_BACK_ORDER} "
        + ("never arrived" if not result.rolled_back_arrived else "ARRIVED (it must not)")
    )

    sample = next(
        ((h, m) for h in result.hooks for m in h.arrived.values() if b"order.status_changed" in m[1]), None
    )
    if sample:
        hook, (headers, body) = sample
        shown = ("Content-Type", "User-Agent", "X-Brutlers-Signature", "webhook-id", "webhook-timestamp",
                 "webhook-signature")  # fmt: skip
        lines = [f"POST /hooks/{hook.name} HTTP/1.1"]
        lines += [f"{k}: {v}" for k in shown for hk, v in headers.items() if hk.lower() == k.lower()]
        lines += ["", body.decode()]
        console.print(
            Panel(
                escape("\n".join(lines)),
                title=f"A signed request, as the {hook.name} receiver saw it",
            )
        )
        console.print(
            "[green]✓[/] verified by the receiver: X-Brutlers-Signature = hex HMAC-SHA256(body, secret), "
            "and webhook-signature per Standard Webhooks (webhook-id is the idempotency key)"
        )
    queries = [
        "select delivery_id, event_type, url, attempt, status_code, error_class,\n"
        "       round(duration_ms::numeric, 1) as ms, delivery_status\n"
        "  from outbox.delivery_log order by attempt_id;",
        "select * from outbox.queue_stats;",
        "select o.id, o.status, e.event_type, e.created_at\n"
        "  from demo_shop_orders o join outbox.events e on e.data->>'id' = o.id order by e.id;",
    ]
    where = (
        f'psql "{result.database_url}"'
        if result.kept
        else "(the demo database is gone now; `outbox-worker demo --keep` leaves it running)"
    )
    console.print(Group(f"[bold]Look at the delivery log[/] {escape(where)}", *(f"  {q}" for q in queries)))
