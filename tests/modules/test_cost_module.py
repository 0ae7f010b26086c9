"""The cost model end to end through the CLI (cost > 0 = unsafe), and its metrics on a case worked out by hand."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_safe.cli import run
from lit_safe.metrics import CostStats
from lit_safe.models.score_model import ScoreModel
from lit_safe.modules.cost import COST_SIGN

REPO = Path(__file__).resolve().parents[2]


def test_cost_stats_by_hand():
    stats = CostStats()
    unsafer, safer = torch.tensor([2.0, -1.0]), torch.tensor([-1.0, 0.5])
    unsafer_sign, safer_sign = torch.tensor([1, -1]), torch.tensor([-1, -1])
    stats.update(torch.tensor(0.3), unsafer, safer, unsafer_sign, safer_sign)
    values = stats.compute()
    assert float(values["accuracy"]) == 0.5  # 2 > -1 right, -1 > 0.5 wrong
    # signs: 2 (+1) right, -1 (-1) right, -1 (-1) right, 0.5 (-1) wrong
    assert float(values["accuracy_sign"]) == 0.75
    assert float(values["cost_unsafe_mean"]) == 2.0  # the only response labelled unsafe
    assert float(values["cost_safe_mean"]) == pytest.approx((-1.0 - 1.0 + 0.5) / 3)
    assert float(values["cost_mean"]) == pytest.approx(0.125)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cost")
    config = yaml.safe_load((REPO / "configs/quickstart/cost.yaml").read_text())
    config["trainer"].update({"max_epochs": 1, "enable_progress_bar": False})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(tmp / "checkpoints")
        if callback["class_path"].endswith("ExportPretrained"):
            callback["init_args"]["dirpath"] = str(tmp / "cost_model")
    config["data"]["init_args"].update({"synthetic_rows": 1600, "num_workers": 0, "prepared_dir": str(tmp / "prep")})
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp, path, run(["fit", "--config", str(path)])


def test_cost_model_learns_order_and_sign(fitted):
    _, _, cli = fitted
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/accuracy"]) >= 0.8
    assert float(metrics["val/accuracy_sign"]) >= 0.8
    assert float(metrics["val/cost_unsafe_mean"]) > 0 > float(metrics["val/cost_safe_mean"])


def test_exported_cost_model_states_its_convention_and_round_trips(fitted):
    tmp, _, cli = fitted
    config = json.loads((tmp / "cost_model" / "config.json").read_text())
    assert config["score_type"] == "cost" and config["cost_sign"] == COST_SIGN
    exported = ScoreModel.from_pretrained(tmp / "cost_model").eval()
    module = cli.model.eval()
    ids = torch.tensor([[1, 40, 41, 42, 2], [1, 50, 51, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids, mask).end_scores, module.model(ids, mask).end_scores)


def test_predict_writes_costs_and_safe_flags(fitted, tmp_path):
    tmp, config, _ = fitted
    out = tmp_path / "costs.jsonl"
    run(["predict", "--config", str(config), "--ckpt_path", str(tmp / "checkpoints" / "last.ckpt"),
         "--trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter",
         "--trainer.callbacks.output_path", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and set(rows[0]) == {"row", "unsafer_cost", "safer_cost", "unsafer_safe", "safer_safe"}
    assert all(r["safer_safe"] == (r["safer_cost"] <= 0) for r in rows)


def test_reward_batches_are_refused_with_a_clear_error():
    from lit_safe.modules.cost import CostModule

    module = CostModule()
    module.configure_model()
    batch = {"input_ids": torch.tensor([[1, 5, 2], [1, 6, 2]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    with pytest.raises(ValueError, match="safety"):
        module.model_step(batch)


@pytest.mark.parametrize(("module_path", "wrong"), [("reward.RewardModule", "safety"),
                                                    ("cost.CostModule", "preference"),
                                                    ("sft.SFTModule", "preference"),
                                                    ("dpo.DPOModule", "sft"),
                                                    ("moderation.ModerationModule", "safety")])
def test_a_data_module_with_another_view_is_refused(module_path, wrong):
    # the safety view puts the less safe response first, the preference view the better one: a RewardModule fed the
    # safety view would learn the opposite order without an error
    import importlib
    from types import SimpleNamespace

    name, cls = module_path.split(".")
    module = getattr(importlib.import_module(f"lit_safe.modules.{name}"), cls)()
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams=SimpleNamespace(view=wrong), tokenizer=None))
    with pytest.raises(ValueError, match=f"{cls} trains on the data module's .* view, got view '{wrong}'"):
        module.setup("fit")
