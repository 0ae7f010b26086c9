"""A killed run resumes exactly: fit to step k with a checkpoint saved there (a crash right after it), resume from it
to step n, and compare with one uninterrupted run to n: every weight, buffer and optimizer tensor bit for bit, the
rows the data loader served, and, for PPO-Lagrangian, lambda, the episode-cost window and the rollout count.

Each trainer runs its shipped quickstart config (tiny sizes), through the same LightningCLI as ``lit-safe fit``,
with a validation batch every few steps: validation, data loader iterators and sanity checks draw from the global
random stream at other points in a resumed run, so the training randomness (PPO sampling, minibatch order,
diffusion noise and timesteps, dropout) must come from a stream of its own that the checkpoint carries.
"""

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lit_safe.cli import LitSafeCLI

REPO = Path(__file__).resolve().parents[2]


class KillAfter(Callback):
    """Save a checkpoint after step ``step`` and stop, as a run killed right after that checkpoint would."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.path.exists():
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


class RowRecorder(Callback):
    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "prompts" in batch:
            batch = batch["prompts"]
        if "row" in batch:
            self.rows += batch["row"].tolist()


def _config(name: str, tmp: Path, trainer: dict, model: dict, data: dict) -> Path:
    config = yaml.safe_load((REPO / "configs" / "quickstart" / f"{name}.yaml").read_text())
    config["trainer"].update({"enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                              "enable_checkpointing": False,
                              **trainer})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    callbacks = []
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ExportPretrained"):
            callback["init_args"]["dirpath"] = str(tmp / "export")
            callbacks.append(callback)
    config["trainer"]["callbacks"] = callbacks  # no ModelCheckpoint: the kill saves its own
    config["model"]["init_args"].update(model)
    config["data"]["init_args"].update({"num_workers": 0, **data})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, tmp: Path, kill_at: int | None = None, ckpt_path: Path | None = None):
    cli = LitSafeCLI(args=["--config", str(config), "--trainer.default_root_dir", str(tmp)], run=False)
    recorder = RowRecorder()
    cli.trainer.callbacks.append(recorder)
    if kill_at is not None:
        cli.trainer.callbacks.append(KillAfter(kill_at, tmp / "killed.ckpt"))
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return cli, recorder.rows


def _tensors(cli) -> dict[str, torch.Tensor]:
    """Every weight and buffer of the module and every tensor of every optimizer's state."""
    out = {f"model/{k}": v for k, v in cli.model.state_dict().items()}
    for i, optimizer in enumerate(cli.trainer.optimizers):
        for param, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                out[f"optimizer{i}/{param}/{key}"] = torch.as_tensor(value)
    return out


def assert_resumes_exactly(name: str, tmp: Path, kill_at: int, steps: int, trainer: dict | None = None,
                           model: dict | None = None, data: dict | None = None):
    trainer = {"max_epochs": 1, "max_steps": steps, **(trainer or {})}
    config = _config(name, tmp, trainer, model or {}, {"prepared_dir": str(tmp / "prepared"), **(data or {})})
    full, full_rows = _fit(config, tmp / "full")
    _, first_rows = _fit(config, tmp / "cut", kill_at=kill_at)
    assert (tmp / "cut" / "killed.ckpt").is_file()
    resumed, rest_rows = _fit(config, tmp / "cut", ckpt_path=tmp / "cut" / "killed.ckpt")

    assert full.trainer.global_step == resumed.trainer.global_step == steps
    assert first_rows + rest_rows == full_rows  # the same batches in the same order
    a, b = _tensors(full), _tensors(resumed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after the resume: {differ[:8]}"
    return full, resumed


TEXT = {"synthetic_rows": 200, "batch_size": 8, "max_length": 96, "group_size": 4}
EVERY_3 = {"val_check_interval": 3, "limit_val_batches": 1}  # validation between the kill and the end
VIDEO = {"synthetic_rows": 48, "val_fraction": 0.25, "batch_size": 4}


@pytest.mark.parametrize("name, data, model", [
    ("reward", TEXT, {}),
    ("cost", TEXT, {}),
    ("moderation", TEXT, {}),
    ("sft", TEXT, {}),
    pytest.param("prompt_augmenter_dpo", {**VIDEO, "tokenizer": "tiny"}, {"backbone": "tiny"}, id="dpo"),
    pytest.param("diffusion_dpo", {**VIDEO, "tokenizer": "tiny"}, {"backbone": "tiny"},
                 id="diffusion_dpo", marks=pytest.mark.slow),
])
def test_a_killed_run_resumes_bit_exactly(name, data, model, tmp_path):
    assert_resumes_exactly(name, tmp_path, kill_at=3, steps=6, trainer=EVERY_3, model=model, data=data)


@pytest.fixture(scope="module")
def tiny_models(tiny_ppo_models):
    return tiny_ppo_models(cost_bias=1.0)


@pytest.mark.slow
def test_ppo_lagrangian_resumes_bit_exactly(tiny_models, tmp_path):
    """Three rollouts of 2 PPO epochs x 2 minibatches; killed after the first, resumed from its checkpoint."""
    models = {"backbone": str(tiny_models / "actor"), "reward_model": str(tiny_models / "reward"),
              "cost_model": str(tiny_models / "cost"), "max_new_tokens": 8, "episode_window": 6}
    data = {"tokenizer": str(tiny_models / "actor"), "synthetic_rows": 80, "batch_size": 4}
    full, resumed = assert_resumes_exactly("ppo_lagrangian", tmp_path, kill_at=4, steps=12, model=models, data=data)
    assert full.model.rollouts_done == resumed.model.rollouts_done == 3
    assert list(full.model.episode_costs) == list(resumed.model.episode_costs)  # the window, float for float
    assert len(full.model.episode_costs) == 6  # 3 rollouts x 4 prompts, the last 6 kept
    assert torch.equal(full.model.log_lambda, resumed.model.log_lambda) and float(full.model.log_lambda) != 0.0
