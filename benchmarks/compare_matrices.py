"""A committed `evaluate --adaptive` report folder against a regeneration of it (same command, other code or
options): every per-image decision and query count, and each attacker's own seconds. Writes compare.txt and
compare.png into --out.

    python benchmarks/compare_matrices.py reports/adaptive \\
        reports/matrix_speed_mobilenet_v2_regenerated/run --out reports/matrix_speed_mobilenet_v2_regenerated
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path


def rows(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, newline="") as f:
        return list(csv.DictReader(f))


def per_image(folder: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    """(model, method, attacker, image) → that row of attackers_per_image.csv."""
    return {(r["model"], r["method"], r["attacker"], r["image"]): r
            for r in rows(folder, "attackers_per_image.csv")}


def own_seconds(table: list[dict[str, str]], column: str = "own_seconds") -> Counter | None:
    """attacker → ``column`` (``own_seconds``, or ``own_cpu_seconds``: own CPU seconds) summed over the timed rows
    of an attackers.csv ``table``, models and schemes together; None where a timed row lacks it (a run made, or
    resumed over shards made, before it was measured): a partial sum would pass for the whole."""
    timed = [r for r in table if r.get("own_seconds")]
    if any(not r.get(column) for r in timed):
        return None
    seconds: Counter = Counter()
    for r in timed:
        seconds[r["attacker"]] += float(r[column])
    return seconds


def differing(before: list[dict[str, str]], after: list[dict[str, str]], key: tuple[str, ...]
              ) -> tuple[list[tuple], int, int]:
    """Two per-image CSVs' decisions (``defense_success``) keyed by the columns ``key``: the keys in both whose
    decisions differ, how many keys both have, and how many only one has."""
    old, new = ({tuple(r[k] for k in key): r["defense_success"] for r in table} for table in (before, after))
    both = old.keys() & new.keys()
    return sorted(k for k in both if old[k] != new[k]), len(both), len(old.keys() ^ new.keys())


def shard_size(folder: Path) -> int:
    with open(folder / "results.json") as f:
        return int(json.load(f)["config"]["batch_size"])


def compare(committed: Path, regenerated: Path) -> tuple[list[str], dict, dict]:
    """The lines of compare.txt, and each run's own seconds per attacker."""
    shard, other = shard_size(committed), shard_size(regenerated)
    if other != shard:
        raise SystemExit(f"the runs' shards differ ({shard} vs {other} images): their first images differ, so "
                         "the counter fix cannot be told apart")
    old, new = per_image(committed), per_image(regenerated)
    order = list(dict.fromkeys(r["image"] for r in rows(committed, "per_image.csv")))
    both = sorted(old.keys() & new.keys())

    def where(k: tuple) -> str:
        return f"{k[0]} / {k[1]} / {k[2]} / photo {order.index(k[3])} ({k[3]})"

    extra, missing = (dict(Counter(k[2] for k in a.keys() - b.keys())) for a, b in ((new, old), (old, new)))
    lines = [f"per-image rows: committed {len(old)}, regenerated {len(new)}; only in the regenerated run: "
             + f"{extra}; only in the committed run: {missing}"]
    decided = [k for k in both if old[k]["defense_success"] != new[k]["defense_success"]]
    lines.append(f"decisions that differ: {len(decided)} of {len(both)}")
    lines += [f"  {where(k)}: defended {old[k]['defense_success']} -> {new[k]['defense_success']}"
              for k in decided]
    counted = [k for k in both if old[k]["queries"] or new[k]["queries"]]
    moved = [k for k in counted if old[k]["queries"] != new[k]["queries"]]
    first = [k for k in counted if order.index(k[3]) % shard == 0]
    fix = [k for k in moved if k in first and old[k]["queries"] and new[k]["queries"]
           and int(new[k]["queries"]) - int(old[k]["queries"]) == 1]
    lines.append(f"query counts that differ: {len(moved)} of {len(counted)}; {len(fix)} of them are +1 on a "
                 f"shard's first image (the counter fix, QueryCounter.reset); the others:")
    lines += [f"  {where(k)}: {old[k]['queries'] or '-'} -> {new[k]['queries'] or '-'} (defended "
              f"{old[k]['defense_success']} -> {new[k]['defense_success']})" for k in moved if k not in fix]
    unmoved = [k for k in first if k not in moved]
    lines.append(f"a shard's first image whose count did not move (no +1): {len(unmoved)}")
    lines += [f"  {where(k)}: {old[k]['queries']}" for k in unmoved]
    table1, n, alone = differing(*(rows(f, "per_image.csv") for f in (committed, regenerated)),
                                 ("model", "method", "image"))
    lines.append(f"Table 1 per-image decisions that differ: {len(table1)} of {n}"
                 + (f"; {alone} in one run only" if alone else ""))
    before, after = (own_seconds(rows(f, "attackers.csv")) or Counter() for f in (committed, regenerated))
    names = sorted(before.keys() & after.keys(), key=before.get, reverse=True)
    lines.append("\nown seconds per attacker (attackers.csv, summed over schemes; attackers in both runs)")
    lines.append(f"{'attacker':<26} {'committed':>10} {'regenerated':>12} {'ratio':>6}")
    lines += [f"{n:<26} {before[n]:10.1f} {after[n]:12.1f} {after[n] / before[n]:6.2f}" for n in names]
    total_before, total_after = sum(before[n] for n in names), sum(after[n] for n in names)
    lines.append(f"{'all':<26} {total_before:10.1f} {total_after:12.1f} {total_after / total_before:6.2f}")
    for folder, run in ((committed, "committed"), (regenerated, "regenerated")):
        table = rows(folder, "attackers.csv")
        cpu = own_seconds(table, "own_cpu_seconds")
        if cpu:  # every thread of the process: above the wall time where a row ran on several
            lines.append(f"{run} run's own CPU seconds, same attackers: {sum(cpu[n] for n in names):.1f}")
        elif table and "own_cpu_seconds" in table[0]:
            lines.append(f"{run} run's own CPU seconds: some rows lack them (resumed over older shards)")
    lines += [f"only in the regenerated run: {n} {after[n]:.1f} s" for n in after if n not in before]
    lines += [f"only in the committed run: {n} {before[n]:.1f} s" for n in before if n not in after]
    return lines, {n: before[n] for n in names}, {n: after[n] for n in names}


def plot(before: dict, after: dict, committed: Path, regenerated: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(before)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [before[n] / 60 for n in names], 0.4, label=f"committed ({committed})")
    ax.bar([i + 0.2 for i in x], [after[n] / 60 for n in names], 0.4, label=f"regenerated ({regenerated})")
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("own minutes (summed over schemes)")
    ax.set_title(f"{sum(before.values()) / 60:.0f} -> {sum(after.values()) / 60:.0f} min of attacker time "
                 "(attackers in both runs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("committed", type=Path)
    parser.add_argument("regenerated", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    lines, before, after = compare(args.committed, args.regenerated)
    (args.out / "compare.txt").write_text("\n".join(lines) + "\n")
    plot(before, after, args.committed, args.regenerated, args.out / "compare.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
