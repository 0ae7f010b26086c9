"""Plot the curves of ``constrained_task.py`` (its JSON lines) as one PNG: window cost with the threshold, lambda,
and reward per rollout, PPO-Lagrangian against PPO. Needs matplotlib, which lit_safe itself does not depend on
(``pip install matplotlib`` in any environment; the input is plain JSON).

    python benchmarks/plot_constrained_task.py benchmarks/results/constrained_task.jsonl \
        benchmarks/results/constrained_task.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(source: str, target: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib") from err
    runs = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    latest = {run["algorithm"]: run for run in runs}  # the last line of each algorithm
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for algorithm, run in latest.items():
        label = {"ppo_lagrangian": "PPO-Lagrangian", "ppo": "PPO"}.get(algorithm, algorithm)
        curves = run["curves"]
        x = range(1, len(curves["reward"]) + 1)
        axes[0].plot(x, curves["episode_cost"], marker="o", label=label)
        axes[1].plot(x, curves["lambda"], marker="o", label=label)
        axes[2].plot(x, curves["reward"], marker="o", label=label)
    threshold = next(iter(latest.values()))["cost_threshold"]
    axes[0].axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    for ax, title in zip(axes, ("mean episode cost (window)", "lambda", "mean reward (batch)")):
        ax.set_title(title)
        ax.set_xlabel("rollout")
        ax.legend()
        ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: plot_constrained_task.py RESULTS.jsonl OUT.png")
    main(sys.argv[1], sys.argv[2])
