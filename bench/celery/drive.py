"""Throughput of N no-op tasks (submit all, wait for every result) and
sequential submit-to-result latency, against the Celery worker."""
import json
import statistics
import sys
import time

from tasks import noop

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
print(json.dumps({"tasks_per_s": tput, "seq_p50_ms": statistics.median(lat),
                  "seq_p99_ms": lat[int(len(lat) * 0.99) - 1]}))
