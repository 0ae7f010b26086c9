"""FSDP2 on 2 CPU processes: sharded parameters, falling loss, and a checkpoint that reloads in one process.

Runs ``tests/scripts/fsdp2_reward.py`` (the lit-safe CLI with ModelParallelStrategy, gloo) in a subprocess, since
Lightning launches the second rank by re-running the script.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_safe.models.score_model import ScoreModel
from lit_safe.modules.reward import RewardModule

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fsdp2_reward.py"


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.slow
def test_parameters_are_sharded_across_two_ranks(fsdp2_run):
    reports = [json.loads((fsdp2_run / f"shards_rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["n_params"] > 0 and report["n_shard0"] == report["n_params"]  # every parameter is a Shard(0)
        assert report["local_numel"] < 0.6 * report["full_numel"]  # each rank holds about half
    assert reports[0]["local_numel"] + reports[1]["local_numel"] == reports[0]["full_numel"]


@pytest.mark.slow
def test_loss_goes_down(fsdp2_run):
    losses = json.loads((fsdp2_run / "losses.json").read_text())
    assert len(losses) >= 20
    assert losses[0] > 0.6  # starts near log 2 = 0.693 (untrained scores)
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.5 * first


@pytest.mark.slow
def test_checkpoint_and_export_reload_in_one_process_with_the_same_scores(fsdp2_run):
    probe = torch.load(fsdp2_run / "scores.pt")
    ids, mask, sharded_scores = probe["input_ids"], probe["attention_mask"], probe["scores"]

    # The FSDP2 run saved a full (not distributed) checkpoint: load it into a plain single-process module.
    module = RewardModule.load_from_checkpoint(fsdp2_run / "ckpt" / "last.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        reloaded = module.model(ids, mask).end_scores
    torch.testing.assert_close(reloaded, sharded_scores, atol=1e-5, rtol=1e-5)

    exported = ScoreModel.from_pretrained(fsdp2_run / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(ids, mask).end_scores, sharded_scores, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sharded_scores, torch.zeros_like(sharded_scores))
