#!/usr/bin/env python3
"""Draws BENCHMARKS.md's chart from target/bench-results/tasks.json (written
by `cargo bench --bench tasks`): throughput by node count against raw
JetStream, and latency percentiles by offered load.

    scripts/bench-chart.sh        # installs matplotlib into .tools/chart and runs this
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent
data = json.loads((root / "target/bench-results/tasks.json").read_text())
out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs/bench.png"

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
nodes = [t["nodes"] for t in data["throughput"]]
tps = [t["tasks_per_s"] for t in data["throughput"]]
ax1.bar([str(n) for n in nodes], tps, color="#4477aa", label="jetweave echo tasks/s")
ax1.axhline(data["raw_msgs_per_s"], color="#cc6677", linestyle="--", label="raw JetStream msg/s (same run)")
if "raw_with_result_msgs_per_s" in data:
    ax1.axhline(data["raw_with_result_msgs_per_s"], color="#228833", linestyle=":",
                label="raw + a stored result per message (the bound)")
for i, t in enumerate(data["throughput"]):
    ax1.annotate(f"{t['ratio']:.2f}×", (i, tps[i]), ha="center", va="bottom")
ax1.set_xlabel("nodes (separate processes)")
ax1.set_ylabel("per second")
ax1.set_title(f"Throughput, N = {data['n']} (median of {data['reps']})")
ax1.legend(loc="lower right", fontsize=8)

rates = [l["rate"] for l in data["latency"]]
for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
    ax2.plot(rates, [l[key] for l in data["latency"]], marker="o", label=label)
ax2.axhline(data["core_rtt_p50_ms"], color="gray", linestyle=":", label="core request/reply p50")
ax2.set_xscale("log")
ax2.set_xlabel("offered load, tasks/s (open loop)")
ax2.set_ylabel("submit → result, ms")
ax2.set_title("Latency, one node")
ax2.legend(fontsize=8)

fig.tight_layout()
out.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(out, dpi=110)
print(f"wrote {out}")
