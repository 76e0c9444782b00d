"""Throughput of N no-op tasks (all submitted at once, pipelined, then
every result awaited) and sequential submit-to-result latency, against
the taskiq worker. Prints one JSON line."""
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from killed import kill_marked  # noqa: E402
from tasks import broker, noop, slow  # noqa: E402


async def main(n: int, seq: int) -> None:
    await broker.startup()
    t0 = time.perf_counter()
    sent = await asyncio.gather(*(noop.kiq(i) for i in range(n)))
    await asyncio.gather(*(t.wait_result(timeout=300, check_interval=0.01) for t in sent))
    tput = n / (time.perf_counter() - t0)
    lat = []
    for i in range(seq):
        t = time.perf_counter()
        task = await noop.kiq(i)
        await task.wait_result(timeout=30, check_interval=0.001)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    # A killed worker: the worker process running a 1 s task gets SIGKILL.
    mark = os.path.join(os.environ["PEERS_MARK"], "taskiq.pid")
    pending = await slow.kiq(mark)
    killed = await asyncio.to_thread(kill_marked, mark)
    try:
        r = await pending.wait_result(timeout=180, check_interval=0.01)
        outcome = "completed" if not r.is_err else f"error: {r.error!r}"
    except Exception as e:
        outcome = type(e).__name__
    recovery = time.perf_counter() - killed
    await broker.shutdown()
    print(json.dumps({"tasks_per_s": tput, "seq_p50_ms": statistics.median(lat),
                      "seq_p99_ms": lat[int(len(lat) * 0.99) - 1],
                      "killed_worker_s": recovery, "killed_worker_outcome": outcome}))


n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 200
asyncio.run(main(n, seq))
