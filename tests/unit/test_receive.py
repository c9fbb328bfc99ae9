"""``outbox-worker receive``'s judgement of the signatures on a request."""

from __future__ import annotations

import time

from outbox_worker.receive import check_signatures
from outbox_worker.signing import sign_headers

OLD, NEW = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
BODY = b'{"event":"order.created","data":{"id":"x"},"timestamp":"2026-12-01T00:00:00.000Z"}'
HEADER = "X-Brutlers-Signature"


def signed(*secrets: str, at: float | None = None) -> dict[str, str]:
    stamp = int(time.time() if at is None else at)
    return sign_headers(event_id=1, body=BODY, secrets=secrets, timestamp=stamp, signature_header=HEADER)


def test_every_signature_sent_is_checked() -> None:
    checks = check_signatures(signed(NEW, OLD), BODY, [NEW], HEADER, time.time())
    assert checks == {
        HEADER: "verified",
        f"{HEADER}-Previous": "does not verify with the given secrets",
        "webhook-signature": "verified",
    }
    assert set(check_signatures(signed(NEW, OLD), BODY, [OLD, NEW], HEADER, time.time()).values()) == {
        "verified"
    }


def test_a_tampered_body_an_old_timestamp_and_no_signature_are_told_apart() -> None:
    assert check_signatures(signed(NEW), BODY + b" ", [NEW], HEADER, time.time()) == {
        HEADER: "does not verify with the given secrets",
        "webhook-signature": "does not verify with the given secrets",
    }
    stale = check_signatures(signed(NEW, at=time.time() - 600), BODY, [NEW], HEADER, time.time())
    assert stale["webhook-signature"].startswith("verified, but its timestamp is 60")
    assert check_signatures({}, BODY, [NEW], HEADER, time.time()) == {HEADER: "missing"}
    assert check_signatures(signed(NEW), BODY, [], HEADER, time.time()) == {}  # no secret: nothing checked
