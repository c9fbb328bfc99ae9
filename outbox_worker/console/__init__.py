"""The web console: ``/console`` of ``outbox-worker api``, pages over the same SQL functions as the API.

Server-rendered HTML (Jinja templates in ``templates/``, autoescaped), one
stylesheet and one small script in ``static/``, no assets from elsewhere.
Sign-in is with an API key; a vendor's key shows its owner's webhooks, an
operator's (``outbox-worker api-keys create --operator``) every owner's.

Modules, from the bottom up: ``session`` (cookie, viewer, CSRF), ``data``
(the reads only the console makes), ``charts`` (inline SVG), ``web``
(rendering, links, forms, error pages), then one module of routes per
area: ``auth``, ``hooks``, ``log``, ``health``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from outbox_worker.console import auth, health, hooks, log


def install(app: FastAPI) -> None:
    """Serve the console under ``/console`` of ``app`` (left out of the OpenAPI document)."""
    for module in (auth, hooks, log, health):
        app.include_router(module.router, prefix="/console", include_in_schema=False)
    static = Path(__file__).resolve().parent / "static"
    app.mount("/console/static", StaticFiles(directory=static), name="console-static")
