"""One process's request slots, shared fairly by the databases it serves.

Each database's sender keeps its own :class:`~outbox_worker.capacity.CapacityLedger`
(per host, per owner, per webhook); beside it, a :class:`Share` of the one
:class:`Budget` bounds what all of them hold together: ``concurrency`` plus
one refill, as one ledger alone would. A database alone may take every slot.
Once another database wants slots it cannot get, each is held to its fair
share (its weight over the weights of the databases holding or wanting
slots): the busy one takes nothing more while above its share, and the slots
its requests free go to the one waiting, which is woken for them. A busy
database cannot starve a quiet one, and a quiet one costs a busy one nothing.

Only with several databases: a single database's ledger has no share and
pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    """The slots of one process (``total``), and the shares that hold them."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._shares: list[Share] = []
        self._wanting = 0  # shares refused slots they wanted (see Share.want)

    def share(self, name: str, weight: float, wake: Callable[[], None], batch: int) -> Share:
        """A database's share; ``wake`` is called when slots it wanted free up,
        once they are worth a claim (``batch``, or a quarter of its fair share)."""
        share = Share(self, name, weight, wake, batch)
        self._shares.append(share)
        return share

    def fair(self, share: Share) -> int:
        """``share``'s fair number of slots among the databases holding or wanting some."""
        weights = sum(s.weight for s in self._shares if s is share or s.held or s.wanting)
        return max(1, int(self.total * share.weight / weights))

    def others_wanting(self, share: Share) -> bool:
        return self._wanting > (1 if share.wanting else 0)

    def _freed(self) -> None:
        """Slots came free or a share stopped wanting: wake the shares waiting for them."""
        for share in self._shares:
            if share.wanting and not share.woken and share.allowance() >= share.wake_at():
                share.woken = True
                share.wake()

    def _drop(self, share: Share) -> None:
        self._shares.remove(share)
        self.held -= share.held
        share.held = 0
        if share.wanting:
            share.wanting = False
            self._wanting -= 1
        self._freed()

    def describe(self) -> dict[str, dict[str, int]]:
        """What each share holds and its fair share (for logs and tests)."""
        return {s.name: {"held": s.held, "fair": self.fair(s)} for s in self._shares}


class Share:
    """One database's part of a :class:`Budget`. Its ledger calls
    :meth:`take` for a claim's reservation, :meth:`give` for what comes back,
    :meth:`hold` for each job it admits."""

    __slots__ = ("_budget", "_wake", "batch", "held", "name", "wanting", "weight", "woken")

    def __init__(
        self, budget: Budget, name: str, weight: float, wake: Callable[[], None], batch: int
    ) -> None:
        self._budget = budget
        self.name = name
        self.weight = weight
        self._wake = wake
        self.batch = batch
        self.held = 0
        self.wanting = False
        self.woken = False

    def allowance(self) -> int:
        """Slots this share may take now."""
        budget = self._budget
        free = budget.total - budget.held
        if budget.others_wanting(self):
            free = min(free, budget.fair(self) - self.held)
        return max(0, free)

    def wake_at(self) -> int:
        return max(1, min(self.batch, self._budget.fair(self) // 4))

    def wake(self) -> None:
        self._wake()

    def take(self, wanted: int) -> int:
        """Up to ``wanted`` slots; wanting more than it got makes the others
        keep to their fair shares until it has them (or :meth:`sated`)."""
        granted = min(wanted, self.allowance())
        self.hold(granted)
        self.woken = False
        if granted < wanted:
            self.want()
        return granted

    def want(self) -> None:
        """Asked for slots and got fewer: wake it when they free up."""
        self.woken = False
        if not self.wanting:
            self.wanting = True
            self._budget._wanting += 1

    def sated(self) -> None:
        """A claim found fewer due rows than it had room for: wanting no more."""
        if self.wanting:
            self.wanting = False
            self._budget._wanting -= 1
            self._budget._freed()

    def hold(self, count: int = 1) -> None:
        self.held += count
        self._budget.held += count

    def give(self, count: int = 1) -> None:
        self.held -= count
        budget = self._budget
        budget.held -= count
        if budget._wanting:
            budget._freed()

    def close(self) -> None:
        """This database stopped (or restarts): its slots go back."""
        self._budget._drop(self)
