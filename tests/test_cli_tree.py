"""The tree commands through the CLI: tree-grow (resumable), tree-pairs (gold, human labels), lit-safe fit on tree
pairs, the tree-experiment end to end with its outputs, and a parse check of the shipped tree configs."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_safe.cli import run
from lit_safe.tree_experiment import (
    best_of_n_gold,
    mean_ci,
    pairwise_accuracy,
    probe_variance,
    read_trees,
    spearman,
    tree_id_of,
    win_rate,
)

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"grow": "tree-grow", "pairs": "tree-pairs", "tree_experiment": "tree-experiment"}


def command_of(path: Path) -> str:
    return next(c for prefix, c in COMMANDS.items() if path.stem.startswith(prefix))


TREE_CONFIGS = [p for p in sorted((REPO / "configs").rglob("*.yaml"))
                if p.parent.name != "trainer" and "model" not in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", TREE_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_tree_command_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([command_of(path), "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in yaml.safe_load(path.read_text()).items():
        assert printed[key] == value


GROW = ["--policy", "tiny", "--prompts", "synthetic", "--num_prompts", "4", "--depth", "2", "--branching", "3",
        "--segment_tokens", "4", "--max_new_tokens", "12", "--accelerator", "cpu"]


def test_tree_grow_resumes_after_a_kill_and_pairs_are_labelled(tmp_path):
    trees_file = tmp_path / "trees.jsonl"
    run(["tree-grow", *GROW, "--output", str(trees_file)])
    complete = trees_file.read_text().splitlines()
    assert len(complete) == 4
    trees = read_trees(trees_file)
    assert all(len(t.leaves()) >= 3 and t.meta["tokens_forwarded"] > 0 for t in trees)
    # a kill mid-write: two whole trees and half of the third; the rerun keeps the two, regrows the rest
    trees_file.write_text(complete[0] + "\n" + complete[1] + "\n" + complete[2][: len(complete[2]) // 2])
    assert len(read_trees(trees_file)) == 2  # the torn line is not a tree
    run(["tree-grow", *GROW, "--output", str(trees_file)])
    assert trees_file.read_text().splitlines() == complete  # seeded per prompt: the same trees as uninterrupted

    pools_file = tmp_path / "pools.jsonl"
    run(["tree-grow", *GROW, "--kind", "pool", "--responses", "6", "--output", str(pools_file)])
    pools = read_trees(pools_file)
    assert [len(p.leaves()) for p in pools] == [6] * 4
    assert [p.tree_id for p in pools] == [t.tree_id for t in trees] == [tree_id_of(t.prompt) for t in trees]

    pairs_file = tmp_path / "pairs.jsonl"
    run(["tree-pairs", "--trees", str(trees_file), "--pools", str(pools_file), "--topology", "chain", "--budget", "8",
         "--gold_reward", "synthetic", "--gold_cost", "synthetic", "--output", str(pairs_file)])
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    assert len(rows) == 8 and all(r["topology"] == "chain" and r["lca_depth"] == 0 for r in rows)
    assert all({"better_response_id", "safer_response_id", "is_response_0_safe"} <= set(r) for r in rows)

    labels = tmp_path / "human.jsonl"
    labels.write_text(json.dumps({"pair_id": "nope", "better_response_id": 0}) + "\n")
    with pytest.raises(ValueError, match=r"human.jsonl: line 1: field 'pair_id'"):
        run(["tree-pairs", "--trees", str(trees_file), "--budget", "4", "--labels", str(labels),
             "--output", str(tmp_path / "x.jsonl")])


def test_reward_and_cost_models_fit_on_tree_pairs_through_lightning_cli(tmp_path):
    trees_file = tmp_path / "trees.jsonl"
    run(["tree-grow", *GROW, "--num_prompts", "6", "--output", str(trees_file)])
    pairs_file = tmp_path / "pairs.jsonl"
    run(["tree-pairs", "--trees", str(trees_file), "--budget", "48", "--gold_cost", "synthetic",
         "--output", str(pairs_file)])
    for module, view in (("reward.RewardModule", "preference"), ("cost.CostModule", "safety")):
        cli = run(["fit", "--model", f"lit_safe.modules.{module}", "--model.backbone", "tiny",
                   "--model.optimizer.lr", "0.002",
                   "--data", "lit_safe.data_modules.tree_preference.TreePreferenceDataModule",
                   "--data.source", str(pairs_file), "--data.view", view, "--data.num_workers", "0",
                   "--data.batch_size", "8", "--data.test_split", "null", "--data.val_fraction", "0.0",
                   "--data.prepared_dir", str(tmp_path / "prepared"), "--trainer.max_epochs", "1",
                   "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
        assert cli.trainer.global_step == 6  # 48 pairs / 8
        assert np.isfinite(cli.trainer.callback_metrics["train/loss"].item())


def test_the_experiment_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = {"policy": "tiny", "output": str(tmp_path / "exp"), "num_prompts": 6, "eval_prompts": 3, "depth": 2,
              "branching": 3, "segment_tokens": 4, "max_new_tokens": 16, "budgets": [6, 12], "seeds": [0, 1],
              "epochs": 1, "batch_size": 4, "best_of_n": 8, "win_n": 4, "probe_pairs": 8, "max_length": 64,
              "accelerator": "cpu"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run(["tree-experiment", "--config", str(path)])
    out = tmp_path / "exp"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * 2 * 3  # budgets x seeds x topologies
    assert {r["topology"] for r in results} == {"tree", "chain", "chain_equal_responses"}
    assert all(r["pairs"] == r["budget"] for r in results)
    chain = [r for r in results if r["topology"] == "chain"]
    assert all(r["distinct_responses"] == 2 * r["budget"] for r in chain)  # fresh responses for every label
    for budget in (6, 12):
        for seed in (0, 1):
            by = {r["topology"]: r for r in results if r["budget"] == budget and r["seed"] == seed}
            assert by["tree"]["distinct_responses"] == by["chain_equal_responses"]["distinct_responses"]
    table = (out / "summary.md").read_text()
    assert "| 12 | tree | 2 |" in table and "win rate of best-of-4" in table
    assert (out / "accuracy_variance_vs_budget.png").stat().st_size > 10_000
    assert (out / "best_of_n.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert {row["budget"] for row in summary["rows"]} == {6, 12}
    printed = capsys.readouterr().out
    assert "| budget | topology |" in printed

    # a rerun trains nothing again and reports the same table
    before = (out / "results.jsonl").read_text()
    run(["tree-experiment", "--config", str(path)])
    assert (out / "results.jsonl").read_text() == before
    assert (out / "summary.md").read_text() == table
    # other generation settings in the same directory are refused rather than mixed
    with pytest.raises(ValueError, match="other generation settings"):
        run(["tree-experiment", "--config", str(path), "--depth", "3"])


def test_statistics_by_hand():
    gold = np.array([3.0, 1.0, 2.0, 2.0])
    learned = np.array([0.5, -0.5, 0.0, 1.0])
    pairs = np.array([[0, 1], [2, 3], [1, 2], [0, 3]])
    # (0, 1) and (1, 2) ordered right, (0, 3) wrong, (2, 3) a gold tie: not counted
    assert pairwise_accuracy(learned, gold, pairs) == pytest.approx(2 / 3)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["ci95"] == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    grid_gold = np.array([[1.0, 5.0, 2.0, 0.0], [4.0, 0.0, 0.0, 9.0]])
    grid_a = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # picks 5.0 and 4.0 among 4
    grid_b = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # picks 1.0 and 9.0
    assert best_of_n_gold(grid_a, grid_gold, 4) == 4.5 and best_of_n_gold(grid_b, grid_gold, 2) == 2.5
    assert win_rate(grid_gold, grid_a, grid_b, 4) == 0.5
    # variance is measured after standardising: a run that only rescales another has zero variance against it
    scores = np.array([0.1, 0.5, -0.3, 0.9])
    assert probe_variance([scores, 10 * scores], np.array([[0, 1], [2, 3]]))["mean"] == pytest.approx(0.0)
    assert probe_variance([scores, -scores], np.array([[0, 1], [2, 3]]))["mean"] > 0.5


@pytest.mark.slow
def test_tree_grow_on_two_processes_gives_the_trees_of_one(tmp_path):
    """Each rank grows its share of the prompts (gloo on the CPU here, one process per GPU on a GPU machine); rank 0
    merges them in prompt order: the file equals the one of a single process."""
    import os
    import subprocess
    import sys

    lit_safe = Path(sys.executable).with_name("lit-safe")
    args = [str(lit_safe), "tree-grow", *GROW, "--num_prompts", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*args, "--devices", "2", "--output", str(tmp_path / "two.jsonl")], check=True, env=env,
                   capture_output=True, timeout=300)
    subprocess.run([*args, "--output", str(tmp_path / "one.jsonl")], check=True, env=env, capture_output=True,
                   timeout=300)
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert len((tmp_path / "two.jsonl").read_text().splitlines()) == 5
    assert not list(tmp_path.glob("*.part*"))  # the ranks' shards are merged and removed


def test_a_saved_score_model_is_a_gold_scorer(tmp_path, tiny_tokenizer):
    """tree-pairs with --gold_reward DIR labels by the saved model's own end scores (deterministic with beta null)."""
    import torch

    from lit_safe.arena import score
    from lit_safe.models.score_model import ScoreModel, build_score_model
    from lit_safe.models.text import SAFE_RLHF_TEMPLATE

    torch.manual_seed(0)
    build_score_model("tiny", tiny_tokenizer, "reward").save_pretrained(tmp_path / "gold", tokenizer=tiny_tokenizer)
    trees_file = tmp_path / "trees.jsonl"
    run(["tree-grow", *GROW, "--output", str(trees_file)])
    pairs_file = tmp_path / "pairs.jsonl"
    run(["tree-pairs", "--trees", str(trees_file), "--budget", "12", "--gold_reward", str(tmp_path / "gold"),
         "--beta", "null", "--output", str(pairs_file)])
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    model = ScoreModel.from_pretrained(tmp_path / "gold").eval()
    with torch.no_grad():
        expected = score(model, tiny_tokenizer, [r["prompt"] for r in rows], [r["response_0"] for r in rows],
                         SAFE_RLHF_TEMPLATE, 512, 8)
    assert [r["gold_reward_0"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-5)
    for row in rows:
        assert row["better_response_id"] == (0 if row["gold_reward_0"] > row["gold_reward_1"] else 1)
        assert row["label_source"].startswith("reward=") and row["label_source"].endswith(":argmax")


@pytest.mark.parametrize("option, value, message", [
    ("--temperatures", "0", "temperature must be a finite number > 0"),
    ("--depth", "0", "depth must be >= 1"),
    ("--branching", "[2, 2, 2]", "branching has 3 values but depth is 2"),
    ("--top_p", "1.5", r"top_p must be in \(0, 1\]"),
])
def test_bad_growth_settings_fail_before_any_model_or_prompt_is_loaded(option, value, message, tmp_path,
                                                                        monkeypatch):
    from lit_safe import tree_experiment

    def no_loading(*args, **kwargs):
        raise AssertionError("the policy was loaded before the settings were checked")

    monkeypatch.setattr(tree_experiment, "load_policy", no_loading)
    monkeypatch.setattr(tree_experiment, "read_prompt_list", no_loading)
    with pytest.raises(ValueError, match=message):
        run(["tree-grow", *GROW, option, value, "--output", str(tmp_path / "t.jsonl")])
