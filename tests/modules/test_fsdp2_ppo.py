"""PPO-Lagrangian under FSDP2 on 2 CPU processes (gloo): rollouts generate with the sharded actor, lambda moves on
the episode costs of both ranks, and the full checkpoint and the exported actor reload in one process."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lit_safe.models.backbone import load_backbone
from lit_safe.models.score_model import ScoreModel

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ppo_lagrangian_runs_sharded_on_two_ranks(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    load_backbone("tiny", tiny_tokenizer, causal_lm=True).save_pretrained(tmp_path / "actor")
    tiny_tokenizer.save_pretrained(tmp_path / "actor")
    for seed, kind in ((1, "reward"), (2, "cost")):
        torch.manual_seed(seed)
        ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type=kind).save_pretrained(
            tmp_path / kind, tokenizer=tiny_tokenizer)
    config = yaml.safe_load((REPO / "configs/quickstart/ppo_lagrangian.yaml").read_text())
    config["trainer"].update(yaml.safe_load((REPO / "configs/trainer/fsdp2_cpu.yaml").read_text())["trainer"])
    config["trainer"].update({"max_steps": 8, "enable_progress_bar": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"][0]["init_args"].update({"dirpath": str(tmp_path / "ckpt"),
                                                           "every_n_train_steps": 4})
    config["trainer"]["callbacks"][1]["init_args"]["dirpath"] = str(tmp_path / "actor_out")
    config["model"]["init_args"].update({"backbone": str(tmp_path / "actor"), "reward_model": str(tmp_path / "reward"),
                                         "cost_model": str(tmp_path / "cost"), "max_new_tokens": 8})
    config["data"]["init_args"].update({"tokenizer": str(tmp_path / "actor"), "synthetic_rows": 80,
                                        "batch_size": 4, "num_workers": 0, "prepared_dir": str(tmp_path / "prep")})
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(config))

    command = [str(Path(sys.executable).parent / "lit-safe"), "fit", "--config", str(tmp_path / "ppo.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent)).Reload()
    lam = [e.value for e in acc.Scalars("train/lambda")]
    assert len(lam) == 2 and lam[0] != 1.0  # two rollouts (2 PPO epochs x 2 minibatches each), lambda moved
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    # the window holds the episode costs of both ranks: 2 rollouts x 2 ranks x 4 prompts
    assert len(state["ppo_state"]["episode_costs"]) == 16
    assert math.exp(float(state["state_dict"]["log_lambda"])) == pytest.approx(lam[-1], rel=1e-5)
    actor = AutoModelForCausalLM.from_pretrained(tmp_path / "actor_out")
    assert sum(p.numel() for p in actor.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp_path / "actor").parameters())
