"""Plot the preparation lines of ``prepare_scaling.py`` (its JSON lines) as one PNG: wall time and peak memory of
the whole process tree against rows, one line per (code measured, workers); rows and time on log axes, memory on
a linear one. Needs matplotlib.

    python benchmarks/plot_prepare_scaling.py benchmarks/results/prepare_scaling_cpu.jsonl \
        benchmarks/results/prepare_scaling_cpu.png

Lines are told apart by their ``note`` (e.g. before and after a change) and their ``workers``; repeats of a
(note, workers, rows) are drawn at their median.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(source: str, target: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from err
    lines = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    runs: dict[tuple[str, int], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        if line.get("kind") == "prepare":
            runs[(line.get("note") or "", line["workers"])][line["rows"]].append(line)
    if not runs:
        raise SystemExit(f"{source}: no preparation lines")
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for (note, workers), by_rows in sorted(runs.items()):
        rows = sorted(by_rows)
        label = f"{note.split(':')[0] or 'run'}, {workers} worker{'s' if workers > 1 else ''}"
        wall = [statistics.median(r["prepare_s"] for r in by_rows[n]) for n in rows]
        memory = [statistics.median(r["peak_pss_mib"] for r in by_rows[n]) / 1024 for n in rows]
        axes[0].plot(rows, wall, marker="o", label=label)
        axes[1].plot(rows, memory, marker="o", label=label)
    from matplotlib.ticker import ScalarFormatter

    axes[0].set_yscale("log")  # time should grow linearly with rows; memory should stay flat (linear axis)
    axes[1].set_ylim(bottom=0)
    for ax, title, unit in ((axes[0], "preparation wall time", "s"), (axes[1], "peak memory (PSS, all processes)",
                                                                           "GiB")):
        ax.set_xscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_title(title)
        ax.set_xlabel("rows (synthetic PKU-SafeRLHF JSONL)")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    figure.suptitle("Preparing the reward quickstart's preference view (tiny tokenizer)")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: plot_prepare_scaling.py RESULTS.jsonl OUT.png")
    main(sys.argv[1], sys.argv[2])
