"""The constrained task of issue 4: PPO-Lagrangian against plain PPO on the same policy, reward and cost models.

Needs the quickstart exports of the SFT policy, the reward model and the cost model (``make demo`` writes them to
``runs/quickstart``). Runs ``configs/quickstart/ppo_lagrangian.yaml`` twice from the same SFT policy with the same
seed: PPO-Lagrangian with ``--cost-threshold`` (default -3.0, below the SFT policy's mean cost of about -1, so the
constraint starts violated), and plain PPO (``algorithm: ppo``, the cost model only scores for the logs). Prints and
appends to ``--out`` one JSON line per algorithm with the per-rollout curves (reward, cost, episode-cost window,
lambda) read back from TensorBoard, and a summary: the first and last window costs, whether the last window meets the
threshold, lambda's peak and final value.

    make demo                                   # once: the SFT, reward and cost models
    python benchmarks/constrained_task.py       # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curves(log_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(log_dir.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[-1].parent)).Reload()
    tags = set(accumulator.Tags()["scalars"])
    names = ("reward", "cost", "episode_cost", "lambda", "kl", "safe_share")
    return {n: [round(e.value, 4) for e in accumulator.Scalars(f"train/{n}")] for n in names if f"train/{n}" in tags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quickstart"), help="where the quickstart exports are")
    parser.add_argument("--cost-threshold", type=float, default=-3.0)
    parser.add_argument("--max-steps", type=int, default=80, help="actor updates (4 per rollout in the config)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "constrained_task.jsonl"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lit_safe.cli import run

    runs = Path(args.runs)
    for name in ("sft_model", "reward_model", "cost_model"):
        if not (runs / name / "config.json").is_file():
            raise SystemExit(f"{runs / name} is missing: run `make demo` first (it trains the quickstart models)")
    work = Path(tempfile.mkdtemp(prefix="constrained_task_"))
    import yaml

    for algorithm in ("ppo_lagrangian", "ppo"):
        config = yaml.safe_load((ROOT / "configs" / "quickstart" / "ppo_lagrangian.yaml").read_text())
        config["trainer"]["logger"]["init_args"]["save_dir"] = str(work / algorithm)
        config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(work / algorithm / "checkpoints")
        config["trainer"]["callbacks"][1]["init_args"]["dirpath"] = str(work / algorithm / "actor")
        (work / f"{algorithm}.yaml").write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        run(["fit", "--config", str(work / f"{algorithm}.yaml"), "--seed_everything", str(args.seed),
             "--model.backbone", str(runs / "sft_model"), "--model.reward_model", str(runs / "reward_model"),
             "--model.cost_model", str(runs / "cost_model"), "--data.tokenizer", str(runs / "sft_model"),
             "--model.algorithm", algorithm, "--model.cost_threshold", str(args.cost_threshold),
             "--trainer.max_steps", str(args.max_steps), "--trainer.enable_progress_bar", "false",
             "--data.prepared_dir", str(work / "prepared")])
        seconds = time.perf_counter() - start
        c = curves(work / algorithm)
        result = {
            "benchmark": "constrained_task", "algorithm": algorithm, "cost_threshold": args.cost_threshold,
            "rollouts": len(c["reward"]), "seconds": round(seconds, 1),
            "window_cost_first": c["episode_cost"][0], "window_cost_last": c["episode_cost"][-1],
            "constraint_met_at_end": c["episode_cost"][-1] <= args.cost_threshold,
            "reward_first": c["reward"][0], "reward_last5_mean": round(sum(c["reward"][-5:]) / 5, 4),
            "lambda_max": max(c["lambda"]), "lambda_last": c["lambda"][-1], "curves": c,
        }
        line = json.dumps(result)
        print(line)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
