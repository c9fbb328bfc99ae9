# syntax=docker/dockerfile:1
# Build a wheel in one stage, install it into a slim runtime as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY outbox_worker ./outbox_worker
COPY sql ./sql
COPY migrations ./migrations
# Exactly the versions CI tested: the lock file (refresh with .ci/lock). The
# otel extra: tracing when OTEL_* variables ask for it (docs/tracing.md).
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt '.[api,otel]'

# 3.11, not 3.12 or 3.13: the worker spent 10-15% more CPU per delivery on
# those here (docs/performance.md, "Tried and dropped", 2026-12-06).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OUTBOX_LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin outbox
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'outbox-worker[api,otel]' && rm -rf /wheels
USER 10001
# Prometheus /metrics and the /healthz, /readyz probes (OUTBOX_METRICS_PORT).
EXPOSE 9464
# Liveness only: /readyz (database, LISTEN) is for orchestrators' readiness.
# With OUTBOX_METRICS_PORT=0 there is nothing to probe: run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('OUTBOX_METRICS_PORT') or '9464'), timeout=4)"]
# `docker run IMAGE migrate` runs a one-shot migration; the default is the worker.
ENTRYPOINT ["outbox-worker"]
CMD ["run"]
STOPSIGNAL SIGTERM
