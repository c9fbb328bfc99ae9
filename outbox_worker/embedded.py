"""An embedded PostgreSQL (pgserver, the ``embedded`` extra) for zero-setup
runs: the demo, the chaos run and the test suite's last fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start(data_dir: Path, *, cleanup: bool = True) -> tuple[str, Any]:
    """Start (or reuse) a server in ``data_dir``; returns its URL and handle.

    With ``cleanup`` the server stops and its directory is removed when the
    handle is cleaned up (``handle.cleanup()``) or the process exits.
    """
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no database configured and the embedded PostgreSQL is not installed: "
            "set OUTBOX_DATABASE_URL or `pip install 'outbox-worker[embedded]'`"
        ) from exc
    server = pgserver.get_server(data_dir, cleanup_mode="delete" if cleanup else None)  # type: ignore[attr-defined]
    return str(server.get_uri()), server


def restart(server: Any) -> None:
    """Restart an embedded server in place (same socket, same URL), as a
    Postgres restart in production would: every connection is cut."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    # pgserver stops the postmaster it knows on cleanup: teach it the new one.
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
