#!/usr/bin/env python3
"""Draws docs/pools.png from target/pools-bench.csv (written by
`cargo bench --bench pools`): workers over time for each pool.

    scripts/bench-chart.sh pools   # installs matplotlib into .tools/chart and runs this
"""
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent
series = defaultdict(lambda: ([], []))
with open(root / "target/pools-bench.csv") as f:
    for row in csv.DictReader(f):
        t, n = series[row["pool"]]
        t.append(float(row["t_s"]))
        n.append(int(row["workers"]))

fig, ax = plt.subplots(figsize=(8, 3.8))
for name, (t, n) in series.items():
    ax.step(t, n, where="post", label=name)
ax.set_xlabel("seconds since 2,000 sleep 100 ms tasks were queued")
ax.set_ylabel("serving workers (4 slots each)")
ax.set_title("jetweave pool: auto-scaling 1..6 against fixed pools")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(root / "docs/pools.png", dpi=110)
print("wrote docs/pools.png")
