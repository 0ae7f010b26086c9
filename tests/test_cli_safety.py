"""The cost and moderation trainers through the lit-safe command line: fit on the quickstart configs, then
``predict`` on a JSONL of (prompt, response) lines, the written predictions read back and checked against the
labels of those responses; the exported moderation model reproduces the checkpoint's decisions."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_safe.cli import run
from lit_safe.data_modules.schemas import PKU_HARM_CATEGORIES
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
from lit_safe.models.moderation_model import ModerationModel
from lit_safe.modules.moderation import ModerationModule


@pytest.fixture(scope="module")
def responses(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A prediction file of 60 held-out synthetic responses (other seed than training), with a blank line and
    the labels of every line."""
    rows = generate_pku_saferlhf_rows(30, seed=999)
    labelled, lines = [], []
    for row in rows:
        for k in (0, 1):
            lines.append(json.dumps({"prompt": row["prompt"], "response": row[f"response_{k}"]}))
            labelled.append({"line": len(lines), "unsafe": not row[f"is_response_{k}_safe"],
                             "severity": row[f"response_{k}_severity_level"],
                             "categories": row[f"response_{k}_harm_category"]})
            if len(lines) == 3:
                lines.append("")  # a blank line: not an input, but it counts in the line numbers
    path = tmp_path_factory.mktemp("inputs") / "responses.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, labelled


def predict(config: Path, ckpt: Path, inputs: Path, out: Path) -> list[dict]:
    run(["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.predict_file", str(inputs),
         "--trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter",
         "--trainer.callbacks.output_path", str(out)])
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def cost_fitted(tmp_path_factory, quickstart_config):
    tmp = tmp_path_factory.mktemp("cost_cli")
    config = quickstart_config("cost", tmp)
    return tmp, config, run(["fit", "--config", str(config)])


@pytest.fixture(scope="module")
def moderation_fitted(tmp_path_factory, quickstart_config):
    tmp = tmp_path_factory.mktemp("moderation_cli")
    config = quickstart_config("moderation", tmp)
    return tmp, config, run(["fit", "--config", str(config)])


def test_cost_fit_then_predict_costs_per_response(cost_fitted, responses):
    tmp, config, cli = cost_fitted
    assert float(cli.trainer.callback_metrics["val/accuracy_sign"]) >= 0.85
    exported = json.loads((tmp / "cost_model" / "config.json").read_text())
    assert exported["score_type"] == "cost" and exported["cost_sign"] == "positive means unsafe"
    inputs, labels = responses
    written = predict(config, tmp / "checkpoints" / "last.ckpt", inputs, tmp / "costs.jsonl")
    assert [w["line"] for w in written] == [label["line"] for label in labels]  # file order, blank line skipped
    assert set(written[0]) == {"line", "cost", "safe"}
    assert all(w["safe"] == (w["cost"] <= 0) for w in written)
    agree = sum(w["safe"] != label["unsafe"] for w, label in zip(written, labels))
    assert agree >= 0.85 * len(labels)


def test_moderation_fit_logs_metrics_and_the_per_category_table(moderation_fitted):
    tmp, _, cli = moderation_fitted
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/accuracy"]) >= 0.9
    assert float(metrics["val/fpr_safe"]) <= 0.1
    assert float(metrics["val/severity_accuracy"]) >= 0.6
    events = list((tmp / "runs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    scalars = set(accumulator.Tags()["scalars"])
    expected = {"train/loss", "train/loss_category", "train/loss_unsafe", "train/loss_severity", "val/accuracy",
                "val/macro_f1", "val/fpr_safe", "val/recall_unsafe", "val/auroc_unsafe", "val/severity_accuracy",
                "val/flag_rate/severity_0", "val/flag_rate/severity_3", "val/f1/Violence", "val/auroc/Drugs"}
    assert expected <= scalars
    assert "val/per_category/text_summary" in accumulator.Tags()["tensors"]
    table = accumulator.Tensors("val/per_category/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert all(f"| {name} |" in table for name in PKU_HARM_CATEGORIES)


def test_moderation_predict_reads_jsonl_and_writes_categories_severity_and_flag(moderation_fitted, responses):
    tmp, config, _ = moderation_fitted
    inputs, labels = responses
    written = predict(config, tmp / "checkpoints" / "last.ckpt", inputs, tmp / "moderation.jsonl")
    assert [w["line"] for w in written] == [label["line"] for label in labels]
    assert set(written[0]) == {"line", "flagged", "unsafe_prob", "categories", "detected", "severity",
                               "severity_probs"}
    for w in written:
        assert list(w["categories"]) == list(PKU_HARM_CATEGORIES)
        assert 0 <= w["severity"] <= 3 and sum(w["severity_probs"]) == pytest.approx(1, abs=1e-5)
        assert w["flagged"] == (w["unsafe_prob"] >= 0.5)
        assert set(w["detected"]) == {c for c, p in w["categories"].items() if p >= 0.5}
    flag_agreement = sum(w["flagged"] == label["unsafe"] for w, label in zip(written, labels)) / len(labels)
    severity_agreement = sum(w["severity"] == label["severity"] for w, label in zip(written, labels)) / len(labels)
    assert flag_agreement >= 0.9 and severity_agreement >= 0.6


def test_moderation_severity_rule_flags_only_moderate_and_severe(moderation_fitted):
    tmp, config, _ = moderation_fitted
    ckpt = str(tmp / "checkpoints" / "last.ckpt")
    # the command line wins over the checkpoint's hyperparameters, and the difference is announced
    with pytest.warns(UserWarning, match="flag_min_severity: 1 -> 3.*flag_rule: 'unsafe' -> 'severity'"):
        lenient = run(["test", "--config", str(config), "--ckpt_path", ckpt, "--model.flag_rule", "severity",
                       "--model.flag_min_severity", "3"]).trainer.callback_metrics
    strict = run(["test", "--config", str(config), "--ckpt_path", ckpt, "--model.flag_rule", "severity",
                  "--model.flag_min_severity", "1"]).trainer.callback_metrics
    # flagging only severe harm lets minor and moderate responses through; flagging from minor catches them
    assert float(lenient["test/flag_rate/severity_3"]) >= 0.7
    assert float(lenient["test/flag_rate/severity_2"]) < float(strict["test/flag_rate/severity_2"])
    assert float(strict["test/flag_rate/severity_2"]) >= 0.9
    assert float(lenient["test/recall_unsafe"]) < float(strict["test/recall_unsafe"])


def test_exported_moderation_model_reproduces_the_checkpoint(moderation_fitted):
    tmp, _, _ = moderation_fitted
    module = ModerationModule.load_from_checkpoint(tmp / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    exported = ModerationModel.from_pretrained(tmp / "moderation_model").eval()
    assert exported.categories == list(PKU_HARM_CATEGORIES) and exported.severity_levels == 4
    assert exported.decision["flag_rule"] == "unsafe" and exported.pooling == "last"
    batch = module.tokenizer(["BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Hello!<|eos|>",
                              "BEGINNING OF CONVERSATION: USER: How do I boil an egg? ASSISTANT:Boil it.<|eos|>"],
                             return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = module.model(batch["input_ids"], batch["attention_mask"])
        got = exported(batch["input_ids"], batch["attention_mask"])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_predicting_on_a_file_prepares_no_dataset(moderation_fitted, responses, tmp_path):
    _, config, _ = moderation_fitted
    inputs, labels = responses
    run(["predict", "--config", str(config), "--ckpt_path", str(config.parent / "checkpoints" / "last.ckpt"),
         "--data.predict_file", str(inputs), "--data.prepared_dir", str(tmp_path / "untouched"),
         "--trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter",
         "--trainer.callbacks.output_path", str(tmp_path / "out.jsonl")])
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(labels)
    assert not (tmp_path / "untouched").exists()


def test_moderation_checkpoint_keeps_the_pos_weight_of_the_training_counts(moderation_fitted):
    tmp, _, _ = moderation_fitted
    state = torch.load(tmp / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weight = state["pos_weight"]
    assert weight.shape == (len(PKU_HARM_CATEGORIES),)
    assert bool((weight > 1).all()) and bool((weight <= 10).all())  # rare categories: negatives/positives, capped


def test_wrong_tokenizer_or_decision_rule_fails_before_training(moderation_fitted, tmp_path):
    _, config, _ = moderation_fitted
    with pytest.raises(ValueError, match="tokenizer .*small.* is not the model's"):
        run(["fit", "--config", str(config), "--data.tokenizer", "small", "--data.synthetic_rows", "200",
             "--data.prepared_dir", str(tmp_path / "prepared")])
    with pytest.raises(ValueError, match=r"flag_min_severity must be in \[1, 3\], got 4"):
        run(["fit", "--config", str(config), "--model.flag_rule", "severity", "--model.flag_min_severity", "4"])
