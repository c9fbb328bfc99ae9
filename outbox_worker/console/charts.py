"""Small inline SVG charts drawn on the server: no JavaScript, no chart library.

Only numbers computed here reach the markup, and the labels are escaped.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from outbox_worker.console.data import Bucket

WIDTH = 240
HEIGHT = 48


def success_bars(buckets: list[Bucket], label: str) -> Markup:
    """One bar per bucket, its height the bucket's attempts relative to the
    busiest, green for 2xx answers and red for the rest; empty buckets are a baseline tick."""
    busiest = max((b.attempts for b in buckets), default=0) or 1
    step = WIDTH / max(len(buckets), 1)
    parts: list[str] = []
    for i, b in enumerate(buckets):
        x = i * step + 1
        w = max(step - 2, 1)
        if b.attempts == 0:
            parts.append(f'<rect class="empty" x="{x:.1f}" y="{HEIGHT - 1}" width="{w:.1f}" height="1"/>')
            continue
        total_h = max(HEIGHT * b.attempts / busiest, 2)
        ok_h = total_h * b.successes / b.attempts
        fail_h = total_h - ok_h
        tip = escape(f"{b.start:%H:%M} UTC: {b.successes}/{b.attempts} answered 2xx")
        parts.append(f"<g><title>{tip}</title>")
        if ok_h:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{HEIGHT - ok_h:.1f}" width="{w:.1f}" height="{ok_h:.1f}"/>'
            )
        if fail_h:
            y = HEIGHT - total_h
            parts.append(
                f'<rect class="fail" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{fail_h:.1f}"/>'
            )
        parts.append("</g>")
    return _svg(parts, label)


def latency_lines(buckets: list[Bucket], label: str) -> Markup:
    """p50 (solid) and p99 (dashed) per bucket, on a scale from 0 to the highest p99."""
    top = max((b.p99_ms or 0 for b in buckets), default=0) or 1.0
    step = WIDTH / max(len(buckets) - 1, 1)
    parts: list[str] = []
    for name, values in (("p99", [b.p99_ms for b in buckets]), ("p50", [b.p50_ms for b in buckets])):
        xy = [(i * step, HEIGHT - 2 - (HEIGHT - 4) * v / top) for i, v in enumerate(values) if v is not None]
        if xy:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
            parts.append(f'<polyline class="{name}" points="{points}"/>')
            # A dot per bucket: a lone bucket draws no line.
            parts.extend(f'<circle class="{name}" cx="{x:.1f}" cy="{y:.1f}" r="1.5"/>' for x, y in xy)
    parts.append(f'<text x="{WIDTH - 2}" y="10" text-anchor="end">{top:.0f} ms</text>')
    return _svg(parts, label)


def _svg(parts: list[str], label: str) -> Markup:
    # Numbers formatted here and an escaped label only.
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(label)}">' + "".join(parts) + "</svg>"
    )
