"""The tree-vs-chain experiment as a benchmark: run ``lit-safe tree-experiment`` on a config (by default the full
synthetic grid, ``configs/tree/tree_experiment_synthetic_full_grid.yaml``) and print one JSON line with the settings,
the wall time (generation and total), the tokens forwarded per leaf for trees against independent sampling, and the
summary (every (budget, topology) row with 95% intervals over seeds, and the win rates).

    python benchmarks/tree_vs_chain.py                                   # the full grid (about 25 min, 1 thread)
    python benchmarks/tree_vs_chain.py --config my_task.yaml --out runs/tree_bench.jsonl
    python benchmarks/tree_vs_chain.py --set beta=0.5 --set output=runs/tree/beta05   # override any option

The results of the shipped runs are in ``benchmarks/results/tree_vs_chain_cpu.jsonl`` (one line per regime).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/tree/tree_experiment_synthetic_full_grid.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an option of the config (YAML value), e.g. --set beta=0.5")
    parser.add_argument("--regime", default="default", help="a name for this line (e.g. beta0.5)")
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args()

    import torch

    from lit_safe.cli import run

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    overrides = []
    for item in args.set:
        key, _, value = item.partition("=")
        overrides += [f"--{key}", value]
    started = time.perf_counter()
    summary = run(["tree-experiment", "--config", args.config, *overrides])
    line = {
        "benchmark": "tree_vs_chain",
        "regime": args.regime,
        "config": str(Path(args.config).resolve().relative_to(REPO)) if str(args.config).startswith(str(REPO))
        else args.config,
        "overrides": args.set,
        "wall_s": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **{k: v for k, v in summary.items()},
    }
    text = json.dumps(line)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
