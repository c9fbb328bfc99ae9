"""``outbox-worker``: the command line (console script ``outbox_worker.cli:main``).

Its commands live beside the frame they hang from: :mod:`.base` (the group,
context, output and errors), :mod:`.manage` (webhooks, event types, emit,
redeliver, API keys), :mod:`.operate` (migrate, run, stats, purge, grant,
secrets, demo, api), :mod:`.browse` (deliveries and events lists) and
:mod:`.develop` (config, receive).
"""

from outbox_worker.cli import browse, develop, manage, operate
from outbox_worker.cli.base import main

__all__ = ["browse", "develop", "main", "manage", "operate"]
