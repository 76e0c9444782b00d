"""Throughput of N no-op tasks (submit all, wait for every result) and
sequential submit-to-result latency, against the Celery worker."""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from killed import kill_marked  # noqa: E402
from tasks import noop, slow  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 200

t0 = time.perf_counter()
results = [noop.delay(i) for i in range(n)]
for r in results:
    r.get(timeout=300)
tput = n / (time.perf_counter() - t0)

lat = []
for i in range(seq):
    t = time.perf_counter()
    noop.delay(i).get(timeout=30)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()

# A killed worker: the pool process running a 1 s task gets SIGKILL.
mark = os.path.join(os.environ["PEERS_MARK"], "celery.pid")
pending = slow.delay(mark)
killed = kill_marked(mark)
try:
    pending.get(timeout=120)
    recovery, outcome = time.perf_counter() - killed, "completed"
except Exception as e:  # Celery reports the lost task as failed
    recovery, outcome = time.perf_counter() - killed, f"{type(e).__name__}"
print(json.dumps({"tasks_per_s": tput, "seq_p50_ms": statistics.median(lat),
                  "seq_p99_ms": lat[int(len(lat) * 0.99) - 1],
                  "killed_worker_s": recovery, "killed_worker_outcome": outcome}))
