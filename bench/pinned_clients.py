"""What pinning costs: many receiver names over the sharded pyreqwest clients.

``python -m bench.pinned_clients [--hosts 1000]`` sends one signed-size
POST to each of N distinct names (all resolving, through the client's
resolver hook, to the bench receiver on 127.0.0.1), then a second round to
the same names, and prints the time per request of each round and the
process's RSS before, after the first round and after the second. The
first round pins each name (rebuilding its shard's client); the second
reuses them.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psutil
from yarl import URL

from bench import receiver as receiver_mod
from outbox_worker.client import HttpClient
from outbox_worker.netpolicy import UrlPolicy
from outbox_worker.settings import Settings

BODY = b'{"event":"order.created","data":{"id":"ord_1","total":20},"timestamp":"2026-12-07T00:00:00.000Z"}'


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


async def rounds(port: int, hosts: int, in_flight: int) -> None:
    process = psutil.Process()
    rss = [process.memory_info().rss / 2**20]
    settings = Settings(allow_private_networks=True, allow_http=True, metrics_port=0)
    policy = UrlPolicy.for_worker(settings)
    policy.set_database(allow_http=True, allow_private=True)
    async with HttpClient(settings, policy, loopback) as http:
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                answer = await http.post(URL(f"http://h{i:05d}.example:{port}/pin"), BODY, {}, lambda: False)
                assert answer.status == 200

        for name in ("first round (pins each name)", "second round (pinned already)"):
            started = time.perf_counter()
            cpu = time.process_time()
            await asyncio.gather(*(one(i) for i in range(hosts)))
            wall = (time.perf_counter() - started) / hosts * 1000
            used = (time.process_time() - cpu) / hosts * 1000
            rss.append(process.memory_info().rss / 2**20)
            print(f"{name}: {wall:.3f} ms wall, {used:.3f} ms CPU per request; RSS {rss[-1]:.0f} MB")
        trail = " -> ".join(f"{mb:.0f}" for mb in rss)
        print(f"{http.pinned} names pinned over the shards; RSS {trail} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    with receiver_mod.start() as recv:
        port = URL(recv.url).port
        assert port is not None
        asyncio.run(rounds(port, args.hosts, args.in_flight))


if __name__ == "__main__":
    main()
