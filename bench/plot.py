"""Plot benchmark results: each loop's speed relative to uvloop, row by row.

    python bench/plot.py bench/results/core.json bench/results/io.json bench/results/net.json \
        -o bench/results/benchmark.png
    python bench/plot.py bench/results/apps.json -o bench/results/apps.png \
        --title "real applications"

Reads the ``--json`` files written by bench_core.py, bench_io.py, bench_net.py and
bench_apps.py (one run each) and draws one horizontal bar per loop and row: best round divided
by uvloop's best round in the same run (1.0 = as fast as uvloop). The machine and date come
from the files.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOOPS = ("asyncio", "rloop", "ferroloop", "uvloop")
COLORS = {"asyncio": "#9e9e9e", "uvloop": "#5c6bc0", "rloop": "#ef8a3c", "ferroloop": "#c62828"}


def load(paths: list[str]) -> tuple[list[tuple[str, dict[str, float]]], dict]:
    rows: list[tuple[str, dict[str, float]]] = []
    meta: dict = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        meta = meta or doc.get("meta", {})
        for key, per_loop in doc["summary"].items():
            info = doc["rows"][key]
            if info.get("native"):
                continue  # the pure-Rust ceiling is not a loop
            base = per_loop.get("uvloop", {}).get("best")
            if not base:
                continue
            ratios = {
                name: cell["best"] / base
                for name, cell in per_loop.items()
                if cell.get("best") and name in LOOPS
            }
            rows.append((info["title"], ratios))
    return rows, meta


def plot(rows: list[tuple[str, dict[str, float]]], meta: dict, out: str, title: str) -> None:
    height = 0.8 / len(LOOPS)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    for i, (_, ratios) in enumerate(reversed(rows)):
        for j, name in enumerate(LOOPS):
            if name in ratios:
                y = i + (j - (len(LOOPS) - 1) / 2) * height
                ax.barh(y, ratios[name], height=height, color=COLORS[name],
                        label=name if i == 0 else None)  # fmt: skip
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([title for title, _ in reversed(rows)], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("throughput relative to uvloop (best round; higher is better)")
    cpu = meta.get("cpu_model") or "?"
    date = (meta.get("date") or "?")[:10]
    ax.set_title(f"{title}  |  {cpu}, {meta.get('cpu_count', '?')} cores, "
                 f"Python {meta.get('python', '?')}  |  {date}", fontsize=8)  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    order = [labels.index(n) for n in LOOPS if n in labels]
    ax.legend([handles[k] for k in order], [labels[k] for k in order], loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="JSON files from the bench scripts' --json")
    p.add_argument("-o", "--output", default="bench/results/benchmark.png")
    p.add_argument("--title", default="ferroloop vs asyncio, uvloop, rloop")
    args = p.parse_args()
    rows, meta = load(args.results)
    if not rows:
        print("no rows with a uvloop baseline in the given files", file=sys.stderr)
        return 1
    plot(rows, meta, args.output, args.title)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
