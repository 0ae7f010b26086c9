"""Nothing silent: a step with a non-finite loss or gradient is skipped (no update) and counted
(``train/nonfinite_steps``), ``max_nonfinite_steps`` of them in a row stop training with an error that names the step,
non-finite weights are never exported or checkpointed, PPO stops with the same error instead of crashing inside
sampling, and out-of-range arguments are refused by name before any model is built."""

import math
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_safe.callbacks.export import ExportPretrained
from lit_safe.cli import run
from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.models.backbone import load_backbone
from lit_safe.modules.base import NonFiniteError
from lit_safe.modules.cost import CostModule
from lit_safe.modules.diffusion_dpo import DiffusionDPOModule
from lit_safe.modules.dpo import DPOModule
from lit_safe.modules.moderation import ModerationModule
from lit_safe.modules.ppo_lagrangian import FiniteLogits, PPOLagrangianModule
from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule
from lit_safe.modules.sft import SFTModule
from lit_safe.modules.video_moderation import VideoModerationModule
from lit_safe.modules.video_preference import VideoCostModule, VideoRewardModule
from lit_safe.optim import OptimizerSettings

REPO = Path(__file__).resolve().parents[2]
FAST = replace(DEFAULT_OPTIMIZER, lr=1e-2, warmup_ratio=0.0)  # the reward model's settings, a big step at once


class PoisonedReward(RewardModule):
    """A reward model whose loss is NaN at the steps in ``nan_loss`` and whose gradient is inf (loss finite) at the
    steps in ``inf_grad``."""

    def __init__(self, nan_loss=(), inf_grad=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_loss, self.inf_grad = set(nan_loss), set(inf_grad)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.nan_loss else loss

    def on_after_backward(self) -> None:
        if self.global_step in self.inf_grad:
            next(self.model.parameters()).grad.fill_(float("inf"))


class Snapshots(Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.model.named_parameters()})


def _fit(tmp_path, module, max_steps=5, callbacks=()):
    L.seed_everything(3)
    data = PKUSafeRLHFDataModule(tokenizer="tiny", synthetic_rows=120, batch_size=4, group_size=2, num_workers=0,
                                 max_length=64, prepared_dir=str(tmp_path / "prepared"))
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=checkpointing,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=list(callbacks), default_root_dir=tmp_path)
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("poison", [{"nan_loss": {2}}, {"inf_grad": {2}}], ids=["nan_loss", "inf_grad"])
def test_a_nonfinite_step_is_skipped_counted_and_training_goes_on(tmp_path, poison):
    module = PoisonedReward(optimizer=FAST, **poison)
    snapshots = Snapshots()
    trainer = _fit(tmp_path, module, callbacks=[snapshots])
    assert trainer.global_step == 5 and module.nonfinite_steps == 1 and module.nonfinite_in_a_row == 0
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 1.0
    after = snapshots.weights
    for key in after[1]:
        assert torch.equal(after[1][key], after[2][key]), key  # the skipped step (global step 2) moved nothing
    assert any(not torch.equal(after[2][k], after[3][k]) for k in after[2])  # the next one trains again
    assert all(torch.isfinite(v).all() for v in after[-1].values())
    # AdamW's moments and step count did not see the skipped step either
    state = trainer.optimizers[0].state_dict()["state"]
    assert {float(s["step"]) for s in state.values()} == {4.0}
    assert module.model.normalizer.count > 0 and math.isfinite(float(module.model.normalizer.mean))


def test_steps_in_a_row_stop_with_an_error_naming_the_step_and_nothing_nonfinite_is_written(tmp_path):
    module = PoisonedReward(nan_loss=range(3, 100), optimizer=FAST, max_nonfinite_steps=2)
    export = ExportPretrained(dirpath=str(tmp_path / "export"))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    with pytest.raises(NonFiniteError, match=r"not finite at step 4 .*2 steps in a row since step 3.*"
                                             r"max_nonfinite_steps=2.*lr=0.01"):
        _fit(tmp_path, module, max_steps=10, callbacks=[export, checkpoints])
    assert not (tmp_path / "export").exists()
    assert module.nonfinite_steps == 2
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_nonfinite_weights_are_neither_exported_nor_checkpointed(tmp_path):
    module = RewardModule(optimizer=replace(DEFAULT_OPTIMIZER, lr=1e-3))
    trainer = _fit(tmp_path, module, max_steps=2)
    trainer.save_checkpoint(tmp_path / "fine.ckpt")
    assert (tmp_path / "fine.ckpt").is_file()
    with torch.no_grad():
        module.model.score_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite weights at step 2, checkpoint refused: model.score_head"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
    with pytest.raises(RuntimeError, match="non-finite weights at step 2 .*score_head.weight.*not exported"):
        ExportPretrained(dirpath=str(tmp_path / "export")).on_fit_end(trainer, module)
    assert not (tmp_path / "export").exists()


def test_the_reported_reward_run_with_lr_1000_stops_instead_of_exporting_nan(tmp_path, quickstart_config, capsys):
    config = quickstart_config("reward", tmp_path, synthetic_rows=400)
    with pytest.raises(NonFiniteError, match="not finite at step .*max_nonfinite_steps=3.*lr=1000.0"):
        run(["fit", "--config", str(config), "--model.init_args.optimizer.lr", "1000", "--trainer.max_steps", "100"])
    assert not (tmp_path / "reward_model").exists()
    # the console script says it in one line and exits 1 (no traceback wall)
    from lit_safe.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--model.init_args.optimizer.lr", "1000", "--trainer.max_steps", "100"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lit-safe: error: RewardModule: not finite at step") and "Traceback" not in "".join(err)


# ------------------------------------------------------------------------------------------------------------ PPO
def test_finite_logits_guard_turns_a_broken_row_into_eos_and_remembers_it():
    guard = FiniteLogits(eos_token_id=2)
    fine = torch.tensor([[0.0, 1.0, -1.0, float("-inf")]])  # a top-p cut (-inf) is not broken
    assert torch.equal(guard(None, fine), fine) and not guard.hit
    scores = torch.tensor([[0.0, float("nan"), 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [float("inf"), 0.0, 0.0, 0.0]])
    out = guard(None, scores)
    assert guard.hit
    assert torch.equal(out[1], scores[1])
    for row in (0, 2):
        assert out[row].argmax() == 2 and torch.softmax(out[row], -1)[2] == 1.0


@pytest.fixture(scope="module")
def tiny_models(tiny_ppo_models):
    return tiny_ppo_models(cost_bias=0.0)


class Break(Callback):
    """After the first rollout, make the actor's logits overflow (finite weights) or its weights NaN."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx > 0:
            return
        with torch.no_grad():
            head = pl_module.model.get_output_embeddings().weight
            if self.how == "overflow":
                head.fill_(3e38)  # the largest float32 is 3.4e38: every logit is +-inf
            else:
                head[0, 0] = float("nan")


def _ppo_config(tmp: Path, models: Path, **model_args) -> Path:
    config = yaml.safe_load((REPO / "configs/quickstart/ppo_lagrangian.yaml").read_text())
    config["trainer"].update({"max_steps": 8, "enable_progress_bar": False, "enable_checkpointing": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    config["trainer"]["callbacks"] = [{"class_path": "lit_safe.callbacks.export.ExportPretrained",
                                       "init_args": {"dirpath": str(tmp / "actor_out")}}]
    config["model"]["init_args"].update({"backbone": str(models / "actor"), "reward_model": str(models / "reward"),
                                         "cost_model": str(models / "cost"), "max_new_tokens": 6, **model_args})
    config["data"]["init_args"].update({"tokenizer": str(models / "actor"), "synthetic_rows": 80, "batch_size": 4,
                                        "num_workers": 0, "prepared_dir": str(tmp / "prepared")})
    path = tmp / "ppo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("how, message", [
    ("overflow", r"sampling distribution is not finite at step 4 \(rollout 2\).*actor_lr="),
    ("nan", r"the actor has non-finite weights at step 4 \(lm_head.weight\); cannot sample"),
])
def test_ppo_stops_with_a_clear_error_instead_of_crashing_in_sampling(tiny_models, tmp_path, how, message):
    from lit_safe.cli import LitSafeCLI

    cli = LitSafeCLI(args=["--config", str(_ppo_config(tmp_path, tiny_models))], run=False)
    cli.trainer.callbacks.append(Break(how))
    with pytest.raises(NonFiniteError, match=message):
        cli.trainer.fit(cli.model, cli.datamodule)
    assert not (tmp_path / "actor_out").exists()


def test_ppo_skips_and_counts_updates_with_a_nonfinite_loss(tiny_models, tmp_path):
    from lit_safe.cli import LitSafeCLI

    cli = LitSafeCLI(args=["--config", str(_ppo_config(tmp_path, tiny_models, max_nonfinite_steps=2))], run=False)
    module = cli.model
    ppo_loss = __import__("lit_safe.modules.ppo_lagrangian", fromlist=["ppo_actor_loss"]).ppo_actor_loss

    def poisoned(*args, **kwargs):
        loss, clip = ppo_loss(*args, **kwargs)
        return loss * float("nan"), clip

    import lit_safe.modules.ppo_lagrangian as ppo

    before = {k: v.clone() for k, v in load_backbone(str(tiny_models / "actor"), module.tokenizer,
                                                      causal_lm=True).state_dict().items()}
    original, ppo.ppo_actor_loss = ppo.ppo_actor_loss, poisoned
    try:
        with pytest.raises(NonFiniteError, match=r"not finite at step 8 \(skipped updates: actor \(loss nan.*"
                                                 r"2 steps in a row since step 4"):
            cli.trainer.fit(module, cli.datamodule)
    finally:
        ppo.ppo_actor_loss = original
    assert module.nonfinite_steps == 2 and module.rollouts_done == 2
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no actor update was applied
    assert float(module.log_lambda) != 0.0  # lambda and the critics still trained on finite losses


# ------------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("cls", [RewardModule, CostModule, ModerationModule, SFTModule, DPOModule, DiffusionDPOModule,
                                 VideoRewardModule, VideoCostModule, VideoModerationModule])
def test_max_nonfinite_steps_is_refused_by_name(cls):
    with pytest.raises(ValueError, match=r"max_nonfinite_steps must be an integer >= 1, got 0"):
        cls(max_nonfinite_steps=0)


@pytest.mark.parametrize("cls, lr, weight_decay, betas, warmup_ratio, lr_schedule", [
    (RewardModule, 2e-5, 0.1, (0.9, 0.95), 0.03, "cosine"),
    (CostModule, 2e-5, 0.1, (0.9, 0.95), 0.03, "cosine"),
    (SFTModule, 2e-5, 0.0, (0.9, 0.95), 0.03, "cosine"),
    (DPOModule, 1e-6, 0.05, (0.9, 0.95), 0.03, "cosine"),
    (ModerationModule, 2e-5, 0.01, (0.9, 0.999), 0.06, "cosine"),
    (VideoRewardModule, 2e-5, 0.1, (0.9, 0.95), 0.03, "cosine"),
    (VideoCostModule, 2e-5, 0.1, (0.9, 0.95), 0.03, "cosine"),
    (VideoModerationModule, 2e-5, 0.01, (0.9, 0.999), 0.06, "cosine"),
    (DiffusionDPOModule, 1e-5, 1e-2, (0.9, 0.999), 0.25, "constant"),
])
def test_each_trainer_defaults_to_its_reference_optimizer(cls, lr, weight_decay, betas, warmup_ratio, lr_schedule):
    default = cls().optimizer_settings  # the trainer's own default, passed on to BackboneModule
    assert default == OptimizerSettings(lr=lr, weight_decay=weight_decay, betas=betas, warmup_ratio=warmup_ratio,
                                        lr_schedule=lr_schedule, max_grad_norm=1.0)


@pytest.mark.parametrize("argument, value, message", [
    ("lambda_init", -1.0, "lambda_init must be > 0"),
    ("temperature", 0.0, "temperature must be > 0, got 0.0"),
    ("actor_lr", -1e-5, "actor_lr must be >= 0"),
    ("critic_lr", -1e-5, "critic_lr must be >= 0"),
    ("lambda_lr", -0.1, "lambda_lr must be >= 0"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
])
def test_ppo_arguments_out_of_range_are_refused_by_name_before_any_model_is_loaded(argument, value, message):
    # the default model paths do not exist here: the error must come before anything is loaded
    with pytest.raises(ValueError, match=message):
        PPOLagrangianModule(backbone="no/such/actor", **{argument: value})
