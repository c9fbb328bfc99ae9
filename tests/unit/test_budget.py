"""The shared budget: a busy database keeps to its fair share while another waits."""

from __future__ import annotations

from outbox_worker.budget import Budget


def test_alone_a_database_may_take_every_slot() -> None:
    budget = Budget(100)
    busy = budget.share("busy", 1.0, lambda: None, batch=25)
    budget.share("quiet", 1.0, lambda: None, batch=25)
    assert busy.take(80) == 80
    assert busy.take(80) == 20
    assert busy.allowance() == 0


def test_a_waiting_database_gets_the_slots_the_busy_one_frees_up_to_its_share() -> None:
    budget = Budget(100)
    woken: list[str] = []
    busy = budget.share("busy", 1.0, lambda: woken.append("busy"), batch=10)
    quiet = budget.share("quiet", 1.0, lambda: woken.append("quiet"), batch=10)
    assert busy.take(100) == 100
    assert quiet.take(30) == 0  # nothing free: it waits, wanting
    busy.give(5)
    assert woken == []  # 5 free: not yet worth a claim (a batch of 10)
    busy.give(5)
    assert woken == ["quiet"]
    assert busy.take(10) == 0  # above its fair share (50) while quiet waits
    assert quiet.take(30) == 10
    busy.give(40)  # busy at 50, its share
    assert quiet.take(50) == 40  # quiet at 50, its share, though busy wants more
    quiet.sated()  # its claim came back short: wanting no more
    busy.give(10)
    assert busy.allowance() == 10  # the free slots are busy's again


def test_weights_divide_the_slots_while_both_want_them() -> None:
    budget = Budget(90)
    heavy = budget.share("heavy", 2.0, lambda: None, batch=10)
    light = budget.share("light", 1.0, lambda: None, batch=10)
    assert light.take(90) == 90
    light.give(90)
    heavy.want()
    light.want()
    assert (heavy.take(90), light.take(90)) == (60, 30)


def test_a_closed_share_gives_back_what_it_held() -> None:
    budget = Budget(10)
    gone = budget.share("gone", 1.0, lambda: None, batch=1)
    other = budget.share("other", 1.0, lambda: None, batch=1)
    assert gone.take(10) == 10
    assert other.take(5) == 0
    gone.close()
    assert other.take(5) == 5
