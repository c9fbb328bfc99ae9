"""What tracing costs the worker: ``python -m bench.tracing_cost [--quick] [--runs N]``.

The throughput drain (``bench.harness.drain``: pre-emitted events, one worker
process, the bench receiver) three ways in the same run: tracing off, on
with every trace sampled, and on with 1% (``OTEL_TRACES_SAMPLER=traceidratio``,
``0.01``). Every event carries a sampled trace context, as from an app that
traces, so "off" reads no context and "on" parses one per attempt. The
exporter sends OTLP/HTTP to a sink on loopback in this process, which counts
the spans it decodes. Reported: deliveries/s and worker CPU ms/delivery,
each as a ratio to "off"; the order of the three alternates between runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import receiver as receiver_mod
from bench.harness import DEFAULT_SERVER, Options, Table, bench_database, drain, median


class SpanSink:
    """An OTLP/HTTP endpoint on loopback that counts the spans it gets."""

    def __init__(self) -> None:
        self.spans = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@contextmanager
def span_sink() -> Iterator[SpanSink]:
    sink = SpanSink()
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True, name="span-sink")
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()


def cases(sink: SpanSink) -> dict[str, dict[str, str]]:
    """The worker's environment for each way: "off" names no exporter."""
    on = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.endpoint,
        "OTEL_SERVICE_NAME": "outbox-worker-bench",
    }
    return {
        "off": {"OTEL_TRACES_EXPORTER": "none"},
        "on, 100%": {**on, "OTEL_TRACES_SAMPLER": "always_on"},
        "on, 1%": {**on, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    }


def scenario_tracing(opts: Options, table: Table) -> None:
    events = opts.size(20_000, 2_000)
    got: dict[str, dict[str, list[float]]] = {}
    with bench_database(opts.server, "trace") as db, receiver_mod.start() as recv, span_sink() as sink:
        ways = cases(sink)
        names = list(ways)
        for run in range(opts.runs):
            for name in names[run % 3 :] + names[: run % 3]:  # each way first in turn
                before = sink.spans
                out = drain(db, recv, events, 1, 1, extra_env=ways[name], traced=True)
                # The last export leaves with the worker's shutdown: wait for it.
                deadline = time.monotonic() + 10
                while name != "off" and sink.spans == before and time.monotonic() < deadline:
                    time.sleep(0.05)
                figures = got.setdefault(name, {})
                figures.setdefault("rate", []).append(out["rate"])
                figures.setdefault("cpu", []).append(out["cpu_ms"])
                figures.setdefault("spans", []).append(sink.spans - before)
    off = {k: median(v) for k, v in got["off"].items()}
    title = f"tracing cost {events:,} ev x 1 wh, 1 worker"
    for name in names:
        r = {k: median(v) for k, v in got[name].items()}
        rate = f"{r['rate']:,.0f} ({r['rate'] / off['rate']:.0%})"
        cpu = f"{r['cpu']:.3f} ({r['cpu'] / off['cpu']:.0%})"
        table.add(title, f"{name}: deliveries/s (ratio to off)", rate)
        table.add(title, f"{name}: worker CPU ms/delivery (ratio to off)", cpu)
        table.add(title, f"{name}: spans exported", f"{r['spans']:,.0f}")


def main(argv: list[str] | None = None) -> int:
    about = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=about)
    parser.add_argument("--quick", action="store_true", help="1 run, 2,000 events (smoke test)")
    parser.add_argument("--runs", type=int, help="runs per figure (median); default 3, 1 with --quick")
    parser.add_argument("--server", default=os.environ.get("OUTBOX_BENCH_SERVER", DEFAULT_SERVER))
    args = parser.parse_args(argv)
    opts = Options(server=args.server, runs=args.runs or (1 if args.quick else 3), quick=args.quick)
    table = Table()
    started = time.monotonic()
    scenario_tracing(opts, table)
    print(
        f"\noutbox_worker tracing cost: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, median of {opts.runs} run(s){' (quick)' if opts.quick else ''}, "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
