"""The arguments every trainer takes are BackboneModule's (and those of a kind of trainer, ScoreTrainer's,
ModerationTrainer's, VideoTextTrainer's): a trainer lists only its own and passes the rest on. LightningCLI still shows
them all under each trainer, the hyperparameters still hold them all with their effective values, and they rebuild
the trainer (what ``load_from_checkpoint`` does); an argument a trainer sets itself (PPO's ``optimizer`` and
``revision``, Diffusion-DPO's ``dtype``) is neither."""

from dataclasses import asdict, replace

import pytest
from jsonargparse import ArgumentParser

from lit_safe.modules.cost import CostModule
from lit_safe.modules.diffusion_dpo import DiffusionDPOModule
from lit_safe.modules.dpo import DPOModule
from lit_safe.modules.moderation import ModerationModule
from lit_safe.modules.ppo_lagrangian import PPOLagrangianModule
from lit_safe.modules.reward import DEFAULT_OPTIMIZER, RewardModule
from lit_safe.modules.sft import SFTModule
from lit_safe.modules.video_moderation import VideoModerationModule
from lit_safe.modules.video_preference import VideoCostModule, VideoRewardModule

TRAINERS = [RewardModule, CostModule, SFTModule, DPOModule, ModerationModule, PPOLagrangianModule, VideoRewardModule,
            VideoCostModule, VideoModerationModule, DiffusionDPOModule]
SHARED = ("backbone", "gradient_checkpointing", "max_nonfinite_steps")


def cli_defaults(cls) -> dict:
    """The arguments LightningCLI's parser (jsonargparse) shows for ``cls``, with their defaults."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    return parser.get_defaults().model.as_dict()


def plain(hparams) -> dict:
    """The hyperparameters with the ``optimizer`` settings as a dict, as the CLI's config holds them."""
    return {k: asdict(v) if k == "optimizer" else v for k, v in hparams.items()}


@pytest.mark.parametrize("cls", TRAINERS)
def test_the_hyperparameters_are_the_cli_arguments_with_their_defaults(cls):
    module = cls()
    shown = cli_defaults(cls)
    assert all(name in shown for name in SHARED)
    # an unset tokenizer override is not saved: the data module's own (always set) tokenizer hyperparameter would
    # clash with it when Lightning merges the two for the logger
    assert plain(module.hparams) == {k: v for k, v in shown.items() if not (k == "tokenizer" and v is None)}
    assert ("optimizer" in shown) == (module.optimizer_settings is not None)


@pytest.mark.parametrize("cls", TRAINERS)
def test_the_hyperparameters_rebuild_the_trainer(cls):
    module = cls(max_nonfinite_steps=5)
    again = cls(**module.hparams)
    assert plain(again.hparams) == plain(module.hparams) and again.hparams.max_nonfinite_steps == 5


def test_forwarded_arguments_reach_every_level_and_the_hyperparameters():
    settings = replace(DEFAULT_OPTIMIZER, lr=1e-3)
    module = VideoCostModule(sign_coeff=0.5, l2_coeff=0.01, optimizer=settings, fusion_layers=3, backbone="tiny",
                             dtype="float32", gradient_checkpointing=True, max_nonfinite_steps=7)
    hp = module.hparams
    assert (hp.sign_coeff, hp.l2_coeff, hp.fusion_layers, hp.gradient_checkpointing, hp.max_nonfinite_steps) == (
        0.5, 0.01, 3, True, 7)
    assert module.optimizer_settings == settings and module.max_nonfinite_steps == 7
    assert module.video_model_arguments()["fusion_layers"] == 3
    moderation = ModerationModule(categories=["a", "b"], pos_weight=False, flag_rule="categories")
    assert (moderation.hparams.categories, moderation.hparams.pos_weight) == (["a", "b"], False)


def test_fixed_arguments_are_not_arguments():
    assert "optimizer" not in cli_defaults(PPOLagrangianModule) and "revision" not in cli_defaults(PPOLagrangianModule)
    assert "dtype" not in cli_defaults(DiffusionDPOModule)
    with pytest.raises(TypeError):
        PPOLagrangianModule(optimizer=DEFAULT_OPTIMIZER)


def test_each_trainer_loads_its_tokenizer_in_the_base():
    assert RewardModule().tokenizer.padding_side == "right"
    assert PPOLagrangianModule().tokenizer.padding_side == "left"  # generation
    assert DiffusionDPOModule().tokenizer is not None


@pytest.mark.parametrize("cls, argument, message", [
    (CostModule, {"l2_coeff": -1.0}, "CostModule: l2_coeff must be >= 0"),
    (VideoRewardModule, {"l2_coeff": -1.0}, "VideoRewardModule: l2_coeff must be >= 0"),
    (DiffusionDPOModule, {"beta": 0.0}, "DiffusionDPOModule: beta must be > 0"),
    (RewardModule, {"loss_type": "pairs"}, "loss_type must be 'sequence' or 'token'"),
])
def test_a_trainer_refuses_its_own_arguments_before_the_tokenizer_is_loaded(cls, argument, message):
    with pytest.raises(ValueError, match=message):
        cls(backbone="no/such/model", **argument)
