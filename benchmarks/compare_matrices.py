"""A committed `evaluate --adaptive` report folder against a regeneration of it (same command, other code or
options): every per-image decision and query count, and each attacker's own seconds. Writes compare.txt and
compare.png into --out.

    python benchmarks/compare_matrices.py reports/adaptive reports/matrix_speed_mobilenet_v2_regenerated/run \
        --out reports/matrix_speed_mobilenet_v2_regenerated
"""
import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("committed", type=Path)
parser.add_argument("regenerated", type=Path)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
COMMITTED, RUN, HERE = args.committed, args.regenerated, args.out
with open(COMMITTED / "results.json") as f:
    config = json.load(f)["config"]
TITLE = f"{','.join(config['models'])}, {config['data']}"
SHARD = config["batch_size"]  # images per shard; the counter fix adds 1 query to a shard's first image


def rows(folder: Path, name: str) -> list[dict]:
    with open(folder / name, newline="") as f:
        return list(csv.DictReader(f))


def per_image(folder: Path) -> dict:
    return {(r["method"], r["attacker"], r["image"]): r for r in rows(folder, "attackers_per_image.csv")}


def own_seconds(folder: Path) -> Counter:
    seconds = Counter()
    for r in rows(folder, "attackers.csv"):
        if r["own_seconds"]:
            seconds[r["attacker"]] += float(r["own_seconds"])
    return seconds


old, new = per_image(COMMITTED), per_image(RUN)
order = list(dict.fromkeys(r["image"] for r in rows(COMMITTED, "per_image.csv")))
both = sorted(old.keys() & new.keys())
extra = dict(Counter(k[1] for k in new.keys() - old.keys()))
lines = [f"per-image rows: committed {len(old)}, regenerated {len(new)}; attackers only in the regenerated run: {extra}"]
decided = [k for k in both if old[k]["defense_success"] != new[k]["defense_success"]]
lines.append(f"decisions that differ: {len(decided)} of {len(both)}")
lines += [f"  {k[0]} / {k[1]} / photo {order.index(k[2])} ({k[2]}): defended {old[k]['defense_success']} -> "
          f"{new[k]['defense_success']}" for k in decided]
counted = [k for k in both if old[k]["queries"]]
moved = [k for k in counted if old[k]["queries"] != new[k]["queries"]]
fix = [k for k in moved if int(new[k]["queries"]) - int(old[k]["queries"]) == 1
       and order.index(k[2]) % SHARD == 0]
lines.append(f"query counts that differ: {len(moved)} of {len(counted)}; {len(fix)} of them are +1 on a shard's first "
             f"image (the counter fix, QueryCounter.reset); the others:")
lines += [f"  {k[0]} / {k[1]} / photo {order.index(k[2])}: {old[k]['queries']} -> {new[k]['queries']} "
          f"(defended {old[k]['defense_success']} in both)" for k in moved if k not in fix]
tables = {name: {(r["method"], r["image"]): r["defense_success"] for r in rows(folder, "per_image.csv")}
          for name, folder in (("old", COMMITTED), ("new", RUN))}
lines.append(f"Table 1 per-image decisions that differ: "
             f"{sum(tables['old'][k] != tables['new'].get(k) for k in tables['old'])} of {len(tables['old'])}")
before, after = own_seconds(COMMITTED), own_seconds(RUN)
names = sorted(before, key=before.get, reverse=True)
lines.append("\nown seconds per attacker (attackers.csv, summed over schemes; attackers in both runs)")
lines.append(f"{'attacker':<26} {'committed':>10} {'regenerated':>12} {'ratio':>6}")
lines += [f"{n:<26} {before[n]:10.1f} {after[n]:12.1f} {after[n] / before[n]:6.2f}" for n in names]
total_before, total_after = sum(before[n] for n in names), sum(after[n] for n in names)
lines.append(f"{'all':<26} {total_before:10.1f} {total_after:12.1f} {total_after / total_before:6.2f}")
lines += [f"only in the regenerated run: {n} {after[n]:.1f} s" for n in after if n not in before]
(HERE / "compare.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

fig, ax = plt.subplots(figsize=(8, 4.5))
x = range(len(names))
ax.bar([i - 0.2 for i in x], [before[n] / 60 for n in names], 0.4, label=f"committed ({COMMITTED})")
ax.bar([i + 0.2 for i in x], [after[n] / 60 for n in names], 0.4, label=f"regenerated ({RUN})")
ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
ax.set_ylabel("own minutes (summed over schemes)")
ax.set_title(f"{TITLE}: {total_before / 60:.0f} -> {total_after / 60:.0f} min of attacker time")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "compare.png", dpi=120)
