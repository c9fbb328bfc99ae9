"""The management HTTP API (FastAPI): webhooks over the same SQL functions as the CLI.

Two route families share one implementation:

* the vendor API (``vendor``), ``/api/vendor/webhooks[/...]``, as in the
  vendor docs (the owner is the one the ``X-Api-Key`` belongs to);
* the brand API (``brand``), ``/brands/{id}/webhooks[/...]``, in the brand
  webhooks envelope (the owner is the brand id of the path, and the key must
  be that brand's).

Every rule (URL policy, known event types, the per-owner limit, ownership) is
the SQL functions'; the routes translate JSON to their arguments and their
exceptions to statuses. Errors are ``{"code", "message"}`` JSON:

========================  ======  =================================================
code                      status  when
========================  ======  =================================================
``bad_request``           400     the body is not JSON
``unauthorized``          401     the key is missing, unknown or revoked
``not_found``             404     no such object for this key (or another owner's)
``method_not_allowed``    405     the path exists, the method does not
``webhook_limit_reached`` 409     the owner has the maximum number of webhooks
``payload_too_large``     413     the body is over 64 KiB
``rate_limited``          429     past the key's or the address's rate (``Retry-After``)
``validation_error``      422     the request does not match the OpenAPI schema
``invalid_url``           422     the URL is refused (scheme, host, private address)
``unknown_event_type``    422     an event type or topic is not in the catalogue
``no_event_types``        422     the events list is empty
``invalid_owner_id``      422     the owner id is refused
``invalid_input``         422     a value the database cannot store (NUL, bad UTF-8)
``unavailable``           503     the database cannot be reached, or is not migrated
``internal_error``        500     a bug
``http_error``            other   any other HTTP-level refusal
========================  ======  =================================================

Input the database refuses is a 422 like input the schema refuses: both are
well-formed requests whose content is wrong; 400 is kept for bodies that are
not JSON at all.

The app owns a psycopg ``AsyncConnectionPool``, opened in its lifespan. Starlette
does not run the lifespan of a mounted sub-application, so when mounted the
pool opens on the first request instead; to also close it on shutdown, enter
the sub-app's lifespan from the parent's::

    api = create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):
            yield

    parent = FastAPI(lifespan=lifespan)
    parent.mount("/outbox", api)

The key check and the operation each run in a transaction of their own, both
committed before the response is sent.

The package, from the bottom up (each module imports only those listed
before it): ``models`` (request and response bodies, request limits),
``errors`` (the error body and its handlers), ``deps`` (what both APIs'
routes depend on: pool, secret box, key check, the delete route),
``deliveries`` (the vendor API's delivery log), ``vendor`` and ``brand``
(the routers), ``app`` (``create_app``).
"""

from __future__ import annotations

from outbox_worker.api.app import create_app
from outbox_worker.api.models import MAX_BODY_BYTES, MAX_PAGE_SIZE

__all__ = ["MAX_BODY_BYTES", "MAX_PAGE_SIZE", "create_app"]
