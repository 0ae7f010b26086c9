"""Video reward and cost modules: the masked cost loss by hand, training steps through Lightning, predictions, export,
and a reward model that learns to prefer brighter videos."""

import json
import math
from dataclasses import replace

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader

from lit_safe.callbacks.predictions import _rows
from lit_safe.losses import cost_preference_loss, masked_cost_preference_loss
from lit_safe.metrics import CostStats, labelled_sign_hits
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_text import COST_SIGN, VideoTextModel
from lit_safe.modules.video_preference import DEFAULT_OPTIMIZER, VideoCostModule, VideoRewardModule

FRAMES, SIZE = 4, 32
FAST = replace(DEFAULT_OPTIMIZER, lr=1e-3, warmup_ratio=0.0)  # the trainer's settings, a big step at once
PROMPTS = ["a cat on a skateboard", "fireworks over a harbour", "a quiet forest at dawn", "a crowded market street"]


# ------------------------------------------------------------------------------------------------------ the math
def test_masked_cost_loss_by_hand():
    unsafer, safer = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 2.0])
    unsafer_sign, safer_sign = torch.tensor([1, 0]), torch.tensor([0, -1])
    # pair 0: -log s(2) = 0.126928; sign term only for the unsafer video: -log s(1 * 1) = 0.313262
    # pair 1: -log s(-2) = 2.126928; sign term only for the safer video: -log s(-1 * 2) = 2.126928
    # mean over pairs: (0.126928 + 0.313262 + 2.126928 + 2.126928) / 2 = 2.347023
    # L2: 0.1 * mean(1, 0, 1, 4) = 0.15
    loss = masked_cost_preference_loss(unsafer, safer, unsafer_sign, safer_sign, l2_coeff=0.1)
    assert loss.item() == pytest.approx(2.347023 + 0.15, abs=1e-5)
    # sign_coeff 0: SafeSora's plain Bradley-Terry loss
    plain = masked_cost_preference_loss(unsafer, safer, unsafer_sign, safer_sign, l2_coeff=0.1, sign_coeff=0.0)
    assert plain.item() == pytest.approx((0.126928 + 2.126928) / 2 + 0.15, abs=1e-5)


def test_masked_cost_loss_is_the_safe_rlhf_loss_when_every_video_is_labelled():
    g = torch.Generator().manual_seed(0)
    unsafer, safer = torch.randn(6, generator=g), torch.randn(6, generator=g)
    unsafer_sign = torch.tensor([1, 1, -1, 1, -1, 1])
    safer_sign = torch.tensor([-1, 1, -1, -1, -1, 1])
    torch.testing.assert_close(masked_cost_preference_loss(unsafer, safer, unsafer_sign, safer_sign),
                               cost_preference_loss(unsafer, safer, unsafer_sign, safer_sign))


def test_an_unlabelled_video_adds_nothing_where_the_unmasked_loss_adds_log_2():
    unsafer = torch.tensor([0.7, -0.3], requires_grad=True)
    safer = torch.tensor([0.1, 0.4], requires_grad=True)
    signs = (torch.tensor([0, 1]), torch.tensor([-1, 0]))
    masked = masked_cost_preference_loss(unsafer, safer, *signs)
    unmasked = cost_preference_loss(unsafer, safer, *signs)
    assert (unmasked - masked).item() == pytest.approx(2 * math.log(2) / 2, abs=1e-6)  # two unlabelled, 2 pairs
    grads = torch.autograd.grad(masked, [unsafer, safer])
    reference = torch.autograd.grad(unmasked, [unsafer, safer])
    for a, b in zip(grads, reference):
        torch.testing.assert_close(a, b)


def test_sign_accuracy_counts_labelled_videos_only():
    stats = CostStats(unlabelled_signs=True)
    unsafer, safer = torch.tensor([2.0, -1.0]), torch.tensor([-1.0, 0.5])
    stats.update(torch.tensor(0.3), unsafer, safer, torch.tensor([1, 0]), torch.tensor([-1, -1]))
    values = stats.compute()
    # labelled: 2 (+1) right, -1 (-1) right, 0.5 (-1) wrong; the -1 of the unlabelled video is not counted
    assert float(values["accuracy_sign"]) == pytest.approx(2 / 3)
    assert float(values["accuracy"]) == 0.5
    assert float(values["cost_unsafe_mean"]) == 2.0
    assert float(values["cost_safe_mean"]) == pytest.approx((-1.0 + 0.5) / 2)
    hit, labelled = labelled_sign_hits(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1, 1, 0]))
    assert hit.tolist() == [1.0, 0.0, 0.0] and labelled.tolist() == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------------------- tiny data
def pair_batch(tokenizer, brightness_first, brightness_second, seed=0, signs=None):
    """A ``preference``/``safety`` batch per the contract: B prompts, 2B videos (the B first, then the B second);
    random textures shifted by a per-video brightness."""
    g = torch.Generator().manual_seed(seed)
    b = len(brightness_first)
    enc = tokenizer([PROMPTS[i % len(PROMPTS)] for i in range(b)], return_tensors="pt", padding=True)
    offsets = torch.cat([torch.as_tensor(brightness_first), torch.as_tensor(brightness_second)]).float()
    texture = torch.rand(2 * b, FRAMES, 3, SIZE, SIZE, generator=g) * 150
    frames = (texture + offsets.view(-1, 1, 1, 1, 1)).round().clamp(0, 255).to(torch.uint8)
    first_sign, second_sign = signs if signs is not None else (torch.zeros(b, dtype=torch.long),) * 2
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "frames": frames,
            "row": torch.arange(b) + seed * b, "first_sign": first_sign, "second_sign": second_sign}


def brighter_first_batch(tokenizer, b, seed):
    """Random pairs, brightness offsets drawn uniformly from [0, 100], the brighter video first (signs: brighter =
    unsafe, darker = safe, except every third pair, which has no is_safe labels)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    offsets = torch.rand(2, b, generator=g) * 100
    labelled = (torch.arange(b) % 3 != 0).long()
    return pair_batch(tokenizer, offsets.max(0).values, offsets.min(0).values, seed, signs=(labelled, -labelled))


class TinyVideoPairs(LightningDataModule):
    """What the video modules read from a data module: ``tokenizer``, ``hparams.num_frames``/``frame_size``, and
    train/val/test loaders of contract batches."""

    def __init__(self, batches: int = 2, batch_size: int = 4, num_frames: int = FRAMES, frame_size: int = SIZE):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer("tiny")
        self.batches = [brighter_first_batch(self.tokenizer, batch_size, s) for s in range(batches)]

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)  # the batches as they are

    def val_dataloader(self):
        return DataLoader(self.batches[:1], batch_size=None)


def trainer(**kwargs):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kwargs)


@pytest.mark.parametrize("module_class", [VideoRewardModule, VideoCostModule])
def test_a_training_step_changes_the_parameters_and_logs_the_metrics(module_class):
    torch.manual_seed(0)
    module = module_class(optimizer=FAST)
    data = TinyVideoPairs()
    fit = trainer(max_steps=2, limit_val_batches=1)
    module.configure_model()  # to snapshot the initial weights (configure_model is idempotent)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    fit.fit(module, datamodule=data)
    changed = {n for n, p in module.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.vision_model.") for n in changed)
    assert any(n.startswith("fusion.") for n in changed) and "score_head.weight" in changed
    assert module.hparams.num_frames == FRAMES and module.hparams.frame_size == SIZE  # taken from the data
    metrics = fit.callback_metrics
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy"} <= set(metrics)
    if module_class is VideoCostModule:
        assert {"train/accuracy_sign", "val/accuracy_sign", "val/cost_safe_mean", "val/cost_unsafe_mean"} <= set(
            metrics)
        assert module.hparams.sign_coeff == 1.0
    else:
        assert {"val/reward_mean", "val/reward_std"} <= set(metrics)


def test_a_frozen_backbone_trains_the_fusion_and_head_only():
    torch.manual_seed(0)
    module = VideoRewardModule(optimizer=FAST, freeze_backbone=True)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=TinyVideoPairs(batches=1))
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(n.startswith("backbone.") for n in changed)


def test_more_frames_in_the_data_than_the_model_covers_is_an_error():
    module = VideoRewardModule(num_frames=2)
    with pytest.raises(ValueError, match="frames per video"):
        trainer(max_steps=1).fit(module, datamodule=TinyVideoPairs(batches=1))


@pytest.mark.parametrize("module_class", [VideoRewardModule, VideoCostModule])
def test_predictions_of_files_and_of_pairs(module_class, tmp_path):
    torch.manual_seed(0)
    module = module_class()
    module.configure_model()
    module.eval()
    tokenizer = module.tokenizer
    pairs = brighter_first_batch(tokenizer, 3, 0)
    enc = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    lines = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "frames": pairs["frames"][:2], "line": torch.tensor([0, 1])}
    with torch.no_grad():
        per_line, per_pair = module.predict_step(lines, 0), module.predict_step(pairs, 0)
    line_rows, pair_rows = _rows(per_line), _rows(per_pair)  # what JsonlPredictionWriter writes
    assert len(line_rows) == 2 and len(pair_rows) == 3
    if module_class is VideoRewardModule:
        assert set(line_rows[0]) == {"line", "reward"}
        assert set(pair_rows[0]) == {"row", "chosen_score", "rejected_score"}
    else:
        assert set(line_rows[0]) == {"line", "cost", "safe"}
        assert all(r["safe"] == (r["cost"] <= 0) for r in line_rows)
        assert set(pair_rows[0]) == {"row", "unsafer_cost", "safer_cost", "unsafer_safe", "safer_safe"}
    json.dumps(line_rows + pair_rows)
    # the same model, exported and reloaded, predicts the same
    module.export_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())["lit_safe_video"]
    assert config["score_type"] == module.score_type
    assert config.get("cost_sign") == (COST_SIGN if module_class is VideoCostModule else None)
    loaded = VideoTextModel.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        again = loaded(lines["input_ids"], lines["attention_mask"], lines["frames"]).scores
    torch.testing.assert_close(again, per_line["reward" if module_class is VideoRewardModule else "cost"])


def test_reward_batches_without_videos_are_refused():
    module = VideoCostModule()
    module.configure_model()
    with pytest.raises(ValueError, match="view: safety"):
        module.model_step({"input_ids": torch.ones(1, 2, dtype=torch.long)})


# ---------------------------------------------------------------------------------------------------- learning
def test_the_reward_model_learns_to_prefer_brighter_videos():
    """60 steps of 8 random pairs (the brighter video preferred): on 64 held-out random pairs the tiny model scores
    the brighter video higher more than 80% of the time (chance: 50%)."""
    torch.manual_seed(0)
    module = VideoRewardModule(optimizer=replace(FAST, lr=2e-3, lr_schedule="constant", weight_decay=0.0))
    data = TinyVideoPairs(batches=60, batch_size=8)
    trainer(max_steps=60, limit_val_batches=0).fit(module, datamodule=data)
    module.eval()
    with torch.no_grad():
        held_out = [module.pair_scores(brighter_first_batch(data.tokenizer, 16, 500 + s)) for s in range(4)]
    accuracy = torch.cat([(brighter > darker).float() for brighter, darker in held_out]).mean().item()
    assert accuracy > 0.8, accuracy


def test_a_checkpoint_restores_the_cost_model(tmp_path):
    torch.manual_seed(0)
    module = VideoCostModule(optimizer=FAST, sign_coeff=0.5)
    fit = trainer(max_steps=1, limit_val_batches=0)
    fit.fit(module, datamodule=TinyVideoPairs(batches=1))
    fit.save_checkpoint(tmp_path / "last.ckpt")
    restored = VideoCostModule.load_from_checkpoint(tmp_path / "last.ckpt").eval()
    hp = restored.hparams
    assert (hp.num_frames, hp.frame_size, hp.sign_coeff) == (FRAMES, SIZE, 0.5)
    batch = brighter_first_batch(restored.tokenizer, 2, 7)
    with torch.no_grad():
        torch.testing.assert_close(restored.pair_scores(batch), module.eval().pair_scores(batch))


@pytest.mark.parametrize(("module_class", "wrong"), [(VideoCostModule, "preference"), (VideoRewardModule, "safety")])
def test_a_pair_view_in_the_other_order_is_refused(module_class, wrong):
    # the safety view puts the less safe video first, the preference view the preferred one: the wrong one would
    # train the model backwards without any error
    from types import SimpleNamespace

    module = module_class(backbone="tiny")
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams=SimpleNamespace(view=wrong), tokenizer=None))
    with pytest.raises(ValueError, match=f"got view '{wrong}'"):
        module.setup("fit")
