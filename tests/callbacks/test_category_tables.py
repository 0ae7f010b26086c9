"""The per-category table of the moderation trainers: the markdown of lit_safe.metrics.category_table, and the
CategoryTables callback writing it as TensorBoard text from what the module computed (on rank 0 only)."""

from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_safe.callbacks.category_tables import CategoryTables
from lit_safe.metrics import ModerationStats, category_table

NAMES = ["Violence", "Drugs"]


def _values():
    """ModerationStats values of four responses: Violence tp 1, fn 1; Drugs fp 1 and no positive."""
    stats = ModerationStats(NAMES, ["safe", "unsafe"], 0)
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.uint8)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.1], [0.1, 0.8], [0.1, 0.1]])
    unsafe = torch.tensor([1, 1, 0, 0])
    stats.update(torch.tensor(0.5), probs, targets, torch.tensor([0.9, 0.2, 0.7, 0.1]), unsafe,
                 torch.tensor([True, False, True, False]), probs >= 0.5, None, torch.full((4,), -1))
    return stats.compute()


def test_category_table_markdown_by_hand():
    table = category_table(NAMES, _values())
    assert table.splitlines() == [
        "| category | support | precision | recall | F1 | AUROC |",
        "|---|---:|---:|---:|---:|---:|",
        "| Violence | 2 | 1.000 | 0.500 | 0.667 | 1.000 |",  # scores 0.9, 0.2 vs 0.1, 0.1: every pair ordered
        "| Drugs | 0 | 0.000 | 0.000 | 0.000 | nan |",  # no positive: F1 0 (one false positive), AUROC undefined
    ]


def _module(values, step=7):
    return SimpleNamespace(epoch_metrics={"val": values}, hparams=SimpleNamespace(categories=NAMES), global_step=step)


def _texts(save_dir):
    events = list(save_dir.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    return {tag: [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def test_the_callback_writes_the_modules_last_validation_table_on_rank_zero(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    values = _values()
    CategoryTables().on_validation_end(SimpleNamespace(is_global_zero=True, loggers=[logger]), _module(values))
    CategoryTables().on_test_end(SimpleNamespace(is_global_zero=True, loggers=[logger]), _module(values))  # no test
    CategoryTables().on_validation_end(SimpleNamespace(is_global_zero=False, loggers=[logger]), _module(values, 9))
    logger.experiment.flush()
    texts = _texts(tmp_path)
    assert list(texts) == ["val/per_category/text_summary"]
    assert texts["val/per_category/text_summary"] == [(7, category_table(NAMES, values))]


def test_the_callback_writes_nothing_for_a_module_without_per_category_values(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
    CategoryTables().on_validation_end(trainer, _module({"loss": torch.tensor(0.5)}))
    CategoryTables().on_validation_end(trainer, SimpleNamespace(global_step=0))  # not a lit_safe trainer
    logger.experiment.flush()
    assert _texts(tmp_path) == {}
