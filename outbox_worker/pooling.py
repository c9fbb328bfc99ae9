"""Connections through a pooler: what each process may leave on a session.

Behind a pooler in transaction mode (PgBouncer's ``pool_mode =
transaction``) a client's session is whichever server connection the pooler
lends for one transaction. Anything that outlives the transaction stays on
that server connection and serves other clients next: a worker's ``SET
synchronous_commit = off`` made an application's commits, sharing the pool,
return before their WAL flush. So with ``OUTBOX_POOLER=transaction`` (or
``auto`` when a connection shows a pooler in between) no process of this
package keeps anything on a session: no ``SET``, ``LISTEN``, prepared
statement or session-level advisory lock.

One :class:`Policy` per process checks each connection as it opens: the
worker's pool and its LISTEN and "busy" connections, the API's pool, the
CLI's, the demo's and the migrations'. The check is two ``select
pg_backend_pid()`` in two transactions: a pooler announces an id of its own
at login (PgBouncer a random one), so the server's answer differs from what
psycopg was told (``conn.info.backend_pid``); and where the two answers
differ from each other the connection does not keep a server session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from outbox_worker.errors import OutboxError
from outbox_worker.settings import Settings

if TYPE_CHECKING:
    pass

Process = Literal["worker", "api", "cli", "demo", "migrate"]

# The settings the worker puts on a session of its own, read back by the
# probe so that the log says what the worker runs with when it sets none.
WATCHED = ("synchronous_commit", "enable_seqscan", "jit", "plan_cache_mode")
_PROBE = "select pg_backend_pid(), " + ", ".join(f"current_setting('{name}')" for name in WATCHED)

# What a process stops using when its connections keep no session.
_OFF = {
    "worker": "LISTEN (polls every OUTBOX_POLL_INTERVAL instead), quiet NOTIFY's session lock, "
    "prepared statements, session settings (" + ", ".join(WATCHED) + ": the role's or the server's)",
    "api": "prepared statements",
    "cli": "prepared statements",
    "demo": "prepared statements",
    "migrate": "prepared statements, migrations that need a session",
}
_HINT = "set OUTBOX_POOLER=transaction to say so, or OUTBOX_POOLER=session if the pooler keeps sessions"


class PoolerError(OutboxError):
    """Something that needs a session was asked of a connection that keeps none."""


def session_settings(settings: Settings) -> dict[str, str]:
    """What the worker sets on its own sessions, each for a measured reason.

    Each of its statements is an index lookup of at most a batch of rows,
    prepared once and kept for the connection's life with the plan it got
    first. Planned while a table was small and never analyzed (a new
    install, autovacuum not yet run or off), ``complete_deliveries`` kept a
    sequential scan of ``deliveries`` and read the whole table on every batch
    as it grew: 3-4x its time in a third of the bench's drains; hence
    ``enable_seqscan = off``. JIT goes too: with sequential scans costed as
    disabled, a plan with no index to use (the small ``webhooks`` table)
    looked costly enough to compile (34-360 ms). ``force_generic_plan``:
    PostgreSQL otherwise plans a prepared statement afresh for its first
    five runs, and psycopg prepares only from the sixth, so every connection
    planned each statement ten times (0.58 ms per dispatch). And unless
    ``OUTBOX_SYNCHRONOUS_COMMIT``, commits do not wait for the WAL flush:
    each only records progress that a crash would make the worker redo
    (at-least-once), and waiting bought ~0.4 ms per batch on the hot path.
    """
    values = {"enable_seqscan": "off", "jit": "off", "plan_cache_mode": "force_generic_plan"}
    if not settings.synchronous_commit:
        values["synchronous_commit"] = "off"
    return values


def restrict(settings: Settings) -> Settings:
    """``OUTBOX_POOLER=transaction`` in one place: every session feature off,
    whatever ``OUTBOX_LISTEN``, ``OUTBOX_QUIET_NOTIFY`` and
    ``OUTBOX_PREPARE_STATEMENTS`` say."""
    if settings.pooler != "transaction":
        return settings
    return settings.model_copy(update={"listen": False, "quiet_notify": False, "prepare_statements": False})


@dataclass(frozen=True)
class Probe:
    announced: int  # the backend id sent at login (BackendKeyData)
    backends: tuple[int, int]  # pg_backend_pid() in two transactions in a row
    running_with: dict[str, str]  # WATCHED, as the second transaction saw them

    @property
    def proxied(self) -> bool:
        return any(pid != self.announced for pid in self.backends)

    @property
    def switched(self) -> bool:
        return self.backends[0] != self.backends[1]


def _probe(announced: int, rows: list[tuple[Any, ...]]) -> Probe:
    first, second = rows
    return Probe(announced, (int(first[0]), int(second[0])), dict(zip(WATCHED, second[1:], strict=True)))


async def probe(conn: psycopg.AsyncConnection[Any]) -> Probe:
    """Where ``conn``'s statements run; it must be idle, and is left idle."""
    rows = []
    for _ in range(2):
        cur = await conn.execute(_PROBE, prepare=False)
        rows.append(tuple(await cur.fetchone() or ()))
        if not conn.autocommit:
            await conn.commit()
    return _probe(conn.info.backend_pid, rows)


def probe_sync(conn: psycopg.Connection[Any]) -> Probe:
    """:func:`probe` for a sync connection."""
    rows = []
    for _ in range(2):
        rows.append(tuple(conn.execute(_PROBE, prepare=False).fetchone() or ()))
        if not conn.autocommit:
            conn.commit()
    return _probe(conn.info.backend_pid, rows)


class Policy:
    """``OUTBOX_POOLER`` for one process: may a connection keep session state?

    ``check`` answers for one new connection, and turns off psycopg's
    prepared statements on it when it may not. The answer is logged once per
    process: at info for ``transaction``, as a warning naming the setting
    when ``auto`` found a pooler, as an error when ``session``/``none`` was
    set and the connection shows that it keeps no session.
    """

    def __init__(
        self, pooler: str, log: Any, process: Process, *, sets: dict[str, str] | None = None
    ) -> None:
        self.requested = pooler
        self._log = log.bind(component="pooler")
        self._process = process
        self._told = False
        self._sets = sets or {}

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """True: ``conn`` keeps its session; else its prepared statements are off."""
        kept = self._decide(await probe(conn))
        if not kept:
            conn.prepare_threshold = None
        return kept

    def check_sync(self, conn: psycopg.Connection[Any]) -> bool:
        """:meth:`check` for a sync connection."""
        kept = self._decide(probe_sync(conn))
        if not kept:
            conn.prepare_threshold = None
        return kept

    async def configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """A pool's ``configure`` for processes that set nothing on sessions (the API)."""
        await self.check(conn)

    async def configure_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """A pool's ``configure`` that sets ``sets`` on sessions that are kept, nothing on others."""
        if await self.check(conn) and self._sets:
            names = ", ".join("set_config(%s, %s, false)" for _ in self._sets)
            params = [item for pair in self._sets.items() for item in pair]
            await conn.execute(f"select {names}", params, prepare=False)

    def _decide(self, seen: Probe) -> bool:
        fields: dict[str, Any] = {
            "off": _OFF[self._process],
            "announced_backend": seen.announced,
            "server_backends": list(seen.backends),
        }
        if self._process == "worker":
            fields["sessions_run_with"] = ", ".join(f"{k}={v}" for k, v in seen.running_with.items())
        if self.requested == "transaction":
            self._tell(self._log.info, "OUTBOX_POOLER=transaction: nothing is kept on a session", fields)
            return False
        if seen.switched:
            # Two transactions on one connection, two server sessions: proof of
            # a pool by transaction, whatever was configured.
            level = self._log.warning if self.requested == "auto" else self._log.error
            message = (
                f"OUTBOX_POOLER={self.requested}, but this connection's transactions run on different "
                "server sessions: a pooler in transaction mode is in between; running as "
                "OUTBOX_POOLER=transaction"
            )
            self._tell(level, message, {**fields, "hint": "set OUTBOX_POOLER=transaction"})
            return False
        if self.requested == "auto" and seen.proxied:
            message = (
                "connected through a pooler or proxy (the server session is not the one announced at "
                "login): running as OUTBOX_POOLER=transaction"
            )
            self._tell(self._log.warning, message, {**fields, "hint": _HINT})
            return False
        return True

    def _tell(self, level: Any, message: str, fields: dict[str, Any]) -> None:
        if not self._told:
            self._told = True
            level(message, **fields)
