"""The video moderation module: pos_weight by hand, a training step and its metrics through Lightning, predictions and
the exported decision rule."""

import json
from dataclasses import replace

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader

from lit_safe.callbacks.predictions import _rows
from lit_safe.metrics import category_pos_weight
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_text import VideoTextModel
from lit_safe.modules.video_moderation import DEFAULT_OPTIMIZER, VideoModerationModule

FAST = replace(DEFAULT_OPTIMIZER, lr=1e-3, warmup_ratio=0.0)  # the trainer's settings, a big step at once
CATEGORIES = ["porn", "violence", "hate", "terrorism", "contraband", "controversial", "racism",
              "other_discrimination", "animal_abuse", "child_abuse", "crime", "other_harmful"]
FRAMES, SIZE = 4, 32


def test_pos_weight_by_hand_from_either_summary_format():
    # 10 items; porn 2 positives -> 8 / 2 = 4; violence 1 -> 9 capped at 5; hate none -> 1
    summary = {"items": 10, "categories": ["porn", "violence", "hate"], "category_positives": [2, 1, 0]}
    assert category_pos_weight(summary, ["porn", "violence", "hate"], 5.0).tolist() == [4.0, 5.0, 1.0]
    other = {"count": 10, "positives": {"porn": 2, "violence": 1}}
    assert category_pos_weight(other, ["porn", "violence", "hate"], 5.0).tolist() == [4.0, 5.0, 1.0]
    assert category_pos_weight({}, ["porn"], 5.0) is None


def moderation_batch(tokenizer, b, seed):
    """A ``moderation`` batch per the contract; bright videos are unsafe (violence), dark ones safe."""
    g = torch.Generator().manual_seed(seed)
    unsafe = (torch.arange(b) % 2 == 0).long()
    offsets = unsafe.float() * 100
    texture = torch.rand(b, FRAMES, 3, SIZE, SIZE, generator=g) * 150
    frames = (texture + offsets.view(-1, 1, 1, 1, 1)).round().clamp(0, 255).to(torch.uint8)
    categories = torch.zeros(b, 12)
    categories[:, 1] = unsafe.float()
    enc = tokenizer(["a street at night"] * b, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "frames": frames,
            "categories": categories, "unsafe": unsafe, "severity": torch.full((b,), -1), "row": torch.arange(b),
            "response": torch.zeros(b, dtype=torch.long)}


class TinyVideoLabels(LightningDataModule):
    """What the moderation module reads from a data module: ``tokenizer``, ``categories``, ``label_summary``,
    ``hparams.num_frames``/``frame_size``, and loaders of contract batches."""

    def __init__(self, num_frames: int = FRAMES, frame_size: int = SIZE):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = load_tokenizer("tiny")
        self.categories = list(CATEGORIES)
        self.batches = [moderation_batch(self.tokenizer, 6, s) for s in range(2)]

    def label_summary(self, split="train"):
        return {"items": 12, "categories": CATEGORIES, "category_positives": [0, 3] + [0] * 10}

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


def trainer(**kwargs):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kwargs)


class Snapshot(Callback):
    """The trainable weights as training starts (the model is built in configure_model, after setup)."""

    def on_train_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad}


def test_a_training_step_changes_the_parameters_and_validation_reports_the_metrics():
    torch.manual_seed(0)
    module = VideoModerationModule(optimizer=FAST, max_pos_weight=10.0)
    snapshot = Snapshot()
    fit = trainer(max_steps=2, callbacks=[snapshot])
    fit.fit(module, datamodule=TinyVideoLabels())
    assert module.hparams.categories == CATEGORIES  # from the data module
    # pos_weight from label_summary: violence 3 of 12 -> 9 / 3 = 3; categories without positives -> 1
    assert module.pos_weight.tolist() == [1.0, 3.0] + [1.0] * 10
    before = snapshot.before
    changed = {n for n, p in module.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.") for n in changed) and any(n.startswith("fusion.") for n in changed)
    assert {"category_head.weight", "unsafe_head.weight"} <= changed
    metrics = fit.callback_metrics
    assert {"train/loss", "train/loss_category", "train/loss_unsafe", "train/accuracy", "val/loss", "val/accuracy",
            "val/fpr_safe", "val/recall_unsafe", "val/auroc_unsafe", "val/macro_f1", "val/f1/violence",
            "val/auroc/violence", "val/auroc/porn"} <= set(metrics)
    assert torch.isnan(metrics["val/auroc/porn"])  # no positive porn label in the data


def test_predictions_and_the_exported_decision_rule(tmp_path):
    torch.manual_seed(0)
    module = VideoModerationModule(categories=CATEGORIES, flag_rule="categories",
                                   category_thresholds={"violence": 0.2, "porn": 0.9})
    module.configure_model()
    module.eval()
    batch = moderation_batch(module.tokenizer, 3, 0)
    lines = {k: batch[k] for k in ("input_ids", "attention_mask", "frames")} | {"line": torch.tensor([5, 6, 7])}
    with torch.no_grad():
        per_line, per_row = module.predict_step(lines, 0), module.predict_step(batch, 0)
    rows = _rows(per_line)  # what JsonlPredictionWriter writes
    assert set(rows[0]) == {"line", "flagged", "unsafe_prob", "categories", "detected"}
    assert [r["line"] for r in rows] == [5, 6, 7] and set(rows[0]["categories"]) == set(CATEGORIES)
    for r in rows:  # the categories rule: flagged iff a category reaches its threshold
        hits = [c for c, p in r["categories"].items() if p >= {"violence": 0.2, "porn": 0.9}.get(c, 0.5)]
        assert r["detected"] == hits and r["flagged"] == bool(hits)
    assert set(_rows(per_row)[0]) == {"row", "response", "flagged", "unsafe_prob", "categories", "detected"}
    json.dumps(rows)
    module.export_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["lit_safe_video"]
    assert saved["categories"] == CATEGORIES and saved["decision"]["flag_rule"] == "categories"
    assert saved["decision"]["category_thresholds"]["violence"] == pytest.approx(0.2)
    loaded = VideoTextModel.from_pretrained(tmp_path / "model").eval()
    with torch.no_grad():
        decided = loaded.decide(loaded(lines["input_ids"], lines["attention_mask"], lines["frames"]))
    assert decided["flagged"].tolist() == per_line["flagged"].tolist()
    torch.testing.assert_close(decided["unsafe_prob"], per_line["unsafe_prob"])


def test_a_severity_rule_and_foreign_categories_are_refused():
    module = VideoModerationModule(flag_rule="severity")
    with pytest.raises(ValueError, match="flag_rule"):
        trainer(max_steps=1).fit(module, datamodule=TinyVideoLabels())
    module = VideoModerationModule(categories=["porn", "violence"])
    with pytest.raises(ValueError, match="differ from the data"):
        trainer(max_steps=1).fit(module, datamodule=TinyVideoLabels())


def test_a_checkpoint_restores_the_settings_taken_from_the_data(tmp_path):
    torch.manual_seed(0)
    module = VideoModerationModule(optimizer=FAST)
    fit = trainer(max_steps=1, limit_val_batches=0)
    fit.fit(module, datamodule=TinyVideoLabels())
    fit.save_checkpoint(tmp_path / "last.ckpt")
    restored = VideoModerationModule.load_from_checkpoint(tmp_path / "last.ckpt").eval()
    hp = restored.hparams
    assert (hp.categories, hp.num_frames, hp.frame_size) == (CATEGORIES, FRAMES, SIZE)
    assert restored.pos_weight.tolist() == module.pos_weight.tolist()
    batch = moderation_batch(restored.tokenizer, 2, 9)
    with torch.no_grad():
        a = restored.model(batch["input_ids"], batch["attention_mask"], batch["frames"])
        b = module.eval().model(batch["input_ids"], batch["attention_mask"], batch["frames"])
    torch.testing.assert_close(a.unsafe_logits, b.unsafe_logits)
