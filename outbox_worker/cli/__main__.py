"""``python -m outbox_worker.cli``: the same as the ``outbox-worker`` script."""

from outbox_worker.cli import main

main()
