"""``outbox-worker``: the command line (console script ``outbox_worker.cli:main``).

Its commands live beside the frame they hang from: :mod:`.base` (the group,
context, output and errors), :mod:`.manage` (webhooks, event types, emit,
redeliver, API keys) and :mod:`.operate` (migrate, run, stats, purge, grant,
secrets, demo, api).
"""

from outbox_worker.cli import manage, operate
from outbox_worker.cli.base import main

__all__ = ["main", "manage", "operate"]
