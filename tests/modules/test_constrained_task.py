"""The constrained task, short version (the full one is benchmarks/constrained_task.py): the Safe RLHF pipeline
on the embedded synthetic data (SFT, reward and cost models, one short epoch each), then PPO-Lagrangian with a cost
threshold below the SFT policy's mean cost, against plain PPO from the same policy.

Directions asserted (issues 4 and 14): lambda rises while the constraint is violated and falls once it holds;
PPO-Lagrangian ends with its window cost under the threshold while the reward rises; plain PPO does not respect
the threshold. The runs are seeded; on this task the margins are about 0.55 (PPO-Lagrangian below the threshold)
and 0.6 (PPO above it) in cost units; lambda reaches its cap of 5 and falls back to about 1.4.
"""

import json

import pytest
import yaml

from lit_safe.cli import run

THRESHOLD = -3.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, quickstart_config):
    tmp = tmp_path_factory.mktemp("constrained")
    for name in ("sft", "reward", "cost"):
        run(["fit", "--config", str(quickstart_config(name, tmp))])
    return tmp


@pytest.mark.slow
def test_ppo_lagrangian_meets_the_threshold_that_plain_ppo_misses(pipeline, tmp_path):
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("constrained_task", repo / "benchmarks" / "constrained_task.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    models = {name: pipeline / f"{name}_model" for name in ("sft", "reward", "cost")}
    results = {}
    for algorithm in ("ppo_lagrangian", "ppo"):
        config = yaml.safe_load((repo / "configs/quickstart/ppo_lagrangian.yaml").read_text())
        config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / algorithm)
        config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / algorithm / "checkpoints")
        config["trainer"]["callbacks"][1]["init_args"]["dirpath"] = str(tmp_path / algorithm / "actor")
        (tmp_path / f"{algorithm}.yaml").write_text(yaml.safe_dump(config))
        run(["fit", "--config", str(tmp_path / f"{algorithm}.yaml"), "--model.algorithm", algorithm,
             "--model.backbone", str(models["sft"]), "--model.reward_model", str(models["reward"]),
             "--model.cost_model", str(models["cost"]), "--data.tokenizer", str(models["sft"]),
             "--model.cost_threshold", str(THRESHOLD), "--trainer.max_steps", "96",
             "--trainer.enable_progress_bar", "false", "--data.prepared_dir", str(tmp_path / "prepared")])
        results[algorithm] = bench.curves(tmp_path / algorithm)
    lag, plain = results["ppo_lagrangian"], results["ppo"]
    print(json.dumps({"ppo_lagrangian": lag, "ppo": plain}))

    # lambda rises while the window cost violates the threshold ...
    violated = [i for i, c in enumerate(lag["episode_cost"]) if c > THRESHOLD]
    assert violated and lag["lambda"][violated[-1]] > 2 * lag["lambda"][0]
    # ... and falls once it holds
    peak = max(range(len(lag["lambda"])), key=lambda i: (lag["lambda"][i], i))  # the last of a plateau at the cap
    assert lag["episode_cost"][-1] <= THRESHOLD and lag["lambda"][-1] < 0.5 * lag["lambda"][peak]
    assert all(c <= THRESHOLD for c in lag["episode_cost"][peak + 1 :])
    # the reward rises under the constraint (the mean of the last 5 rollouts against the first 5)
    assert sum(lag["reward"][-5:]) / 5 > sum(lag["reward"][:5]) / 5 + 1.0
    # plain PPO raises the reward too but does not respect the threshold; lambda never moves
    assert sum(plain["reward"][-5:]) / 5 > sum(plain["reward"][:5]) / 5 + 0.4
    assert plain["episode_cost"][-1] > THRESHOLD and set(plain["lambda"]) == {1.0}
    assert lag["episode_cost"][-1] < plain["episode_cost"][-1] - 1.0
