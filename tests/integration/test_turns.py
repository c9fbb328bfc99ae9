"""The turn scheduler itself (outbox_worker.turns) over real PostgreSQL
databases and the lender's real connections: each seat's work is a stand-in
that runs a statement on its turn's connection and says whether it has more,
so what is tested is which database gets a turn when, not the worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from outbox_worker.lending import ConnectionLender
from outbox_worker.logs import get_logger
from outbox_worker.turns import IDLE_POLLS, RETRY_MIN, LentPool, Seat, TurnScheduler
from tests.conftest import with_database
from tests.helpers import eventually


class Turns:
    """A scheduler over some databases, and what each seat's turns saw."""

    def __init__(self, turns: TurnScheduler, pools: list[LentPool], app: str) -> None:
        self.turns = turns
        self.pools = pools
        self.app = app  # the application_name of its connections
        self.started: dict[str, list[float]] = {p.seat.name: [] for p in pools}
        self.busy: set[str] = set()  # seats whose work always has more
        self.held = 0.0  # how long a turn holds its connection
        self.most_at_once = 0  # turns holding a connection at once, at most
        self.refused: dict[str, int] = {}  # how many more turns of a seat fail in its work

    @property
    def seats(self) -> list[Seat]:
        return [p.seat for p in self.pools]

    def work_of(self, pool: LentPool) -> Any:
        async def work() -> bool:
            seat = pool.seat
            self.started[seat.name].append(time.monotonic())
            self.most_at_once = max(self.most_at_once, sum(s.conn is not None for s in self.seats))
            async with pool.connection() as conn:
                if self.refused.get(seat.name):
                    self.refused[seat.name] -= 1
                    await conn.execute("select 1 / 0")  # a statement refused: the turn fails
                await conn.execute("select 1")  # the turn's own connection, to its own database
            if self.held:
                await asyncio.sleep(self.held)
            return seat.name in self.busy

        return work


@asynccontextmanager
async def scheduled(urls: list[str], limit: int, poll_interval: float) -> AsyncIterator[Turns]:
    app = f"turns-test {uuid.uuid4().hex[:8]}"
    lender = ConnectionLender(limit)
    turns = TurnScheduler(lender, poll_interval, get_logger())

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        pass

    kwargs = {"autocommit": True, "application_name": app}
    pools = [
        LentPool(turns, url, kwargs=kwargs, configure=configure, name=f"pool {i}", database=f"db{i}")
        for i, url in enumerate(urls)
    ]
    state = Turns(turns, pools, app)
    for pool in pools:
        await pool.open()
        pool.seat.work = state.work_of(pool)
    runner = asyncio.create_task(turns.run())
    try:
        yield state
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        for pool in pools:
            await pool.close()


def databases(make_database: Any, count: int) -> list[str]:
    return [make_database("outbox_turns") for _ in range(count)]


async def test_an_idle_database_has_a_turn_soon_after_rows_are_inserted(make_database: Any) -> None:
    """Poll interval 0.5 s: an idle database's poll comes every 5 s. Rows
    inserted from another connection show in pg_stat_database once that
    backend is idle or gone (at most a second later), and the next read of
    the statistics (every 0.5 s) gives the database a turn: well before its
    idle poll. Without the statistics' wake-up the turn waits for that poll."""
    [url] = databases(make_database, 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table t (i int)")
    poll = 0.5
    async with scheduled([url], limit=2, poll_interval=poll) as state:
        seat = state.seats[0]
        assert seat.idle_interval == IDLE_POLLS * poll == 5.0
        # Its first turn comes at once; it reads the statistics, seeing the count.
        await eventually(lambda: seat.turns >= 1 and seat.inserted is not None, what="the first turn")
        before = len(state.started["db0"])
        poll_due = seat.next_poll
        inserted_at = time.monotonic()
        assert poll_due - inserted_at > 3.5, "the idle poll is near: the test would prove nothing"
        with psycopg.connect(url, autocommit=True) as conn:  # closed: its counts are published
            conn.execute("insert into t select generate_series(1, 10)")
        await eventually(
            lambda: len(state.started["db0"]) > before, timeout=2 * seat.idle_interval, what="a turn"
        )
        woke_at = state.started["db0"][before]
    took = woke_at - inserted_at
    assert woke_at < poll_due and took < 3.0, f"the turn came {took:.2f} s after the insert, by the idle poll"


async def test_every_database_wanting_turns_has_them_in_round_robin(make_database: Any) -> None:
    """Six databases that always have more work, two connections: each turn
    goes to the database that waited longest, so their counts of turns stay
    within a few of each other, and none is left without."""
    urls = databases(make_database, 6)
    async with scheduled(urls, limit=2, poll_interval=0.5) as state:
        state.busy = {f"db{i}" for i in range(6)}
        state.held = 0.005
        for seat in state.seats:
            state.turns.want(seat)
        await eventually(lambda: state.turns.turns >= 120, timeout=30, what="120 turns")
        counts = {name: len(times) for name, times in state.started.items()}
    # Round robin: 120 turns over 6 databases is 20 each, give or take those running.
    assert min(counts.values()) >= 15, counts
    assert max(counts.values()) - min(counts.values()) <= 4, counts


async def test_an_always_busy_database_does_not_starve_the_others(make_database: Any) -> None:
    """One connection; database 0 always has more work. When the five others
    ask for a turn, each has one before database 0 has had more than two
    more: it goes back to the end of the round, not to its front."""
    urls = databases(make_database, 6)
    async with scheduled(urls, limit=1, poll_interval=0.5) as state:
        state.busy = {"db0"}
        state.turns.want(state.seats[0])
        # Every database's first turn (at once, an idle poll) is behind us.
        await eventually(lambda: all(s.turns >= 1 for s in state.seats), what="first turns")
        await eventually(lambda: state.seats[0].turns >= 10, what="database 0 busy")
        quiet = state.seats[1:]
        assert all(s.next_poll > time.monotonic() + 2 for s in quiet), "idle polls near: proves nothing"
        asked = time.monotonic()
        for seat in quiet:
            state.turns.want(seat)

        def served() -> float | None:
            firsts = [next((t for t in state.started[s.name] if t >= asked), None) for s in quiet]
            return None if None in firsts else max(t for t in firsts if t is not None)

        last = await eventually(served, timeout=5, what="the others' turns")
        busy_meanwhile = sum(asked <= t < last for t in state.started["db0"])
    assert busy_meanwhile <= 2, f"database 0 had {busy_meanwhile} turns before the other five had one"


async def test_many_databases_wanting_turns_never_hold_more_than_the_limit(make_database: Any) -> None:
    """Eight databases always wanting turns, three connections: at most three
    turns at once, three connections open in the lender, and the server sees
    no more (one more for a moment: an evicted connection's backend may still
    be exiting when its replacement connects)."""
    urls = databases(make_database, 8)
    limit = 3
    seen: list[int] = []
    async with scheduled(urls, limit=limit, poll_interval=0.5) as state:
        state.busy = {f"db{i}" for i in range(8)}
        state.held = 0.01
        for seat in state.seats:
            state.turns.want(seat)
        with psycopg.connect(urls[0], autocommit=True) as admin:
            while state.turns.turns < 60:
                [(count,)] = admin.execute(
                    "select count(*) from pg_stat_activity where application_name = %s", (state.app,)
                ).fetchall()
                seen.append(count)
                await asyncio.sleep(0.01)
        lender = state.turns.lender
        assert lender.open <= limit
    assert all(len(times) >= 3 for times in state.started.values()), state.started
    # Every database had its turns on the three connections, made anew in place of others'.
    assert lender.peak == limit and lender.made > limit, (lender.peak, lender.made)
    assert state.most_at_once <= limit
    assert 0 < max(seen) <= limit + 1, seen
    assert sum(n > limit for n in seen) <= len(seen) // 10, seen


def retry_ahead(seat: Seat) -> bool:
    return seat.retry_at > time.monotonic()


async def test_a_failing_database_backs_off_while_the_others_have_turns(
    make_database: Any, server_url: str
) -> None:
    """Three databases always wanting turns: one never existed, one is dropped
    after its first turn. Their turns fail and each is retried after a
    backoff that doubles (0.1 s, 0.2 s, ...): a handful of tries in a couple
    of seconds, not one per free connection. The healthy one goes on."""
    good, dropped = databases(make_database, 2)
    gone = with_database(server_url, f"outbox_turns_gone_{uuid.uuid4().hex[:8]}")
    async with scheduled([good, dropped, gone], limit=2, poll_interval=0.5) as state:
        state.busy = {"db0", "db1", "db2"}
        state.held = 0.005
        ok, dropping, away = state.seats
        for seat in state.seats:
            state.turns.want(seat)
        await eventually(lambda: dropping.problem == "" and away.problem, what="first turns")
        with psycopg.connect(server_url, autocommit=True) as admin:
            name = psycopg.conninfo.conninfo_to_dict(dropped)["dbname"]
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(str(name))))
        await eventually(lambda: dropping.problem, what="the dropped database's turn failing")
        tries = {s.name: s.turns for s in (dropping, away)}
        good_before = ok.turns
        await asyncio.sleep(2.5)
        retried = {s.name: s.turns - tries[s.name] for s in (dropping, away)}
        assert ok.turns - good_before >= 5 and ok.problem == "", (ok.turns - good_before, ok.problem)
        assert away.problem and "does not exist" in away.problem, away.problem
        for seat in (dropping, away):
            assert seat.problem, f"{seat.name}'s turns failed, yet it has no problem"
            # Its backoff had doubled a few times; the next try waits for it.
            assert seat.backoff >= 4 * RETRY_MIN, (seat.name, seat.backoff, retried)
            await eventually(partial(retry_ahead, seat), what=f"{seat.name}'s next try in the future")
    # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: at most six tries in 2.5 s; without the backoff, hundreds.
    assert all(n <= 6 for n in retried.values()), retried


async def test_a_failed_turn_leaves_no_connection_taken(make_database: Any, server_url: str) -> None:
    """With one connection, a database whose turns fail (it does not exist)
    gives it back each time: the other's turns go on."""
    good = make_database("outbox_turns")
    gone = with_database(server_url, f"outbox_turns_gone_{uuid.uuid4().hex[:8]}")
    limit = 1
    async with scheduled([gone, good], limit=limit, poll_interval=0.5) as state:
        state.busy = {"db0", "db1"}
        for seat in state.seats:
            state.turns.want(seat)
        await eventually(lambda: state.seats[0].turns >= 3, what="three failed tries")
        await eventually(lambda: state.seats[1].turns >= 20, what="the good database's turns")
        assert state.turns.lender.open <= limit


async def test_work_that_failed_is_retried_after_the_backoff_not_at_the_idle_poll(
    make_database: Any,
) -> None:
    """A turn asked for whose work fails (a statement refused) is tried again
    after its backoff (0.1 s, then 0.2 s), not at the idle poll 5 s later:
    the round had cleared the ask before the work failed, and without it
    put back the retry waited for that poll."""
    [url] = databases(make_database, 1)
    async with scheduled([url], limit=1, poll_interval=0.5) as state:
        seat = state.seats[0]
        await eventually(lambda: seat.problem == "", what="the first turn")
        assert seat.next_poll - time.monotonic() > 3.5, "the idle poll is near: the test would prove nothing"
        state.refused["db0"] = 2
        asked = time.monotonic()
        state.turns.want(seat)
        await eventually(lambda: seat.problem and "DivisionByZero" in seat.problem, what="a failed turn")
        await eventually(lambda: seat.problem == "", timeout=2 * seat.idle_interval, what="a working turn")
        took = state.started["db0"][-1] - asked
    assert took < 3.0, f"the work was retried {took:.2f} s later, at the idle poll, not after its backoff"
