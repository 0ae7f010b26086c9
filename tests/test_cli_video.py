"""The video trainers through the lit-safe command line, each a short fit of its quickstart config on a small
synthetic SafeSora (one dataset, generated once, shared by every fit): video cost, reward and moderation models,
Diffusion-DPO, and the prompt augmenter (SFT, then DPO from the SFT export). Each fit logs to TensorBoard, checkpoints
and exports a model that reloads with the trained weights; then ``test`` of the cost model from its checkpoint,
``predict`` of the moderation model on a JSONL of (prompt, video) lines, and ``video-arena`` with the exports."""

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from lit_safe.cli import run
from lit_safe.data_modules.safesora import SafeSoraDataModule
from lit_safe.data_modules.schemas import SAFESORA_CATEGORIES
from lit_safe.models.frames import read_video, to_batch_layout
from lit_safe.models.text import REWRITE_TEMPLATE, encode_prompt_texts, pad_right
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_diffusion import load_video_diffusion
from lit_safe.models.video_text import VideoTextModel

ROWS = 48  # 16 prompts x 3 pairs; val_fraction 0.25 leaves 30 train, 12 val and 6 test pairs
# a config's metrics that must be finite after its fit (per-category F1/AUROC of moderation may be NaN on 12 videos)
METRICS = {
    "video_cost": ("train/loss", "val/loss", "val/accuracy", "val/accuracy_sign"),
    "video_reward": ("train/loss", "val/loss", "val/accuracy"),
    "video_moderation": ("train/loss", "val/loss", "val/accuracy"),
    "diffusion_sft": ("train/loss", "val/loss", "val/implicit_accuracy"),
    "diffusion_dpo": ("train/loss", "val/loss", "val/implicit_accuracy"),
    "prompt_augmenter_sft": ("train/loss", "val/loss", "val/token_accuracy"),
    "prompt_augmenter_dpo": ("train/loss", "val/loss", "val/accuracy"),
}
VIDEO_SCORE = ("video_cost", "video_reward", "video_moderation")
CAUSAL_LM = ("prompt_augmenter_sft", "prompt_augmenter_dpo")


def exported(tmp: Path, name: str) -> Path:
    return tmp / f"{name}_model"


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> Path:
    """The prepared_dir every fit shares: the synthetic dataset is written once, next to it."""
    return tmp_path_factory.mktemp("video_data") / "prepared"


@pytest.fixture(scope="module")
def fit(tmp_path_factory, quickstart_config, video_data):
    """``fit(name, trainer={...}, model={...}, samples=True, **data_args)``: fit the quickstart config ``name`` in its
    own folder (``samples=False``: without its VideoSamples callback); returns ``(folder, config path, cli)``."""

    def fit(name: str, trainer: dict | None = None, model: dict | None = None, samples: bool = True, **data_args):
        tmp = tmp_path_factory.mktemp(name)
        config = quickstart_config(name, tmp, synthetic_rows=ROWS, val_fraction=0.25, prepared_dir=str(video_data),
                                   **data_args)
        settings = yaml.safe_load(config.read_text())
        settings["trainer"].update({"log_every_n_steps": 1, **(trainer or {})})
        if not samples:
            settings["trainer"]["callbacks"] = [c for c in settings["trainer"]["callbacks"]
                                                if not c["class_path"].endswith(".VideoSamples")]
        settings["model"]["init_args"].update(model or {})
        config.write_text(yaml.safe_dump(settings))
        return tmp, config, run(["fit", "--config", str(config)])

    return fit


@pytest.fixture(scope="module")
def video_cost(fit):
    return fit("video_cost")


@pytest.fixture(scope="module")
def video_reward(fit):
    return fit("video_reward")


@pytest.fixture(scope="module")
def video_moderation(fit):
    return fit("video_moderation")


SHORT_DIFFUSION = {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1}  # one validation batch at step 2


@pytest.fixture(scope="module")
def diffusion_sft(fit):
    return fit("diffusion_sft", trainer=SHORT_DIFFUSION, samples=False)


@pytest.fixture(scope="module")
def diffusion_dpo(fit, diffusion_sft):
    # from the SFT-on-winners export, as in the quickstart; no sampling
    base = str(exported(diffusion_sft[0], "diffusion_sft"))
    return fit("diffusion_dpo", trainer=SHORT_DIFFUSION, model={"backbone": base}, samples=False, tokenizer=base)


@pytest.fixture(scope="module")
def prompt_augmenter_sft(fit):
    return fit("prompt_augmenter_sft")


@pytest.fixture(scope="module")
def prompt_augmenter_dpo(fit, prompt_augmenter_sft):
    sft = str(exported(prompt_augmenter_sft[0], "prompt_augmenter_sft"))
    return fit("prompt_augmenter_dpo", model={"backbone": sft}, tokenizer=sft)


# --------------------------------------------------------------------------------------------------- every fit
@pytest.mark.parametrize("name", list(METRICS))
def test_fit_logs_checkpoints_and_finite_metrics(name, request):
    tmp, _, cli = request.getfixturevalue(name)
    metrics = cli.trainer.callback_metrics
    for key in METRICS[name]:
        assert math.isfinite(float(metrics[key])), (key, metrics[key])
    assert cli.trainer.global_step > 0
    assert (tmp / "checkpoints" / "last.ckpt").is_file()
    events = sorted((tmp / "runs" / name).rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[-1].parent)).Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert set(METRICS[name]) <= scalars
    assert all(math.isfinite(e.value) for key in METRICS[name] for e in accumulator.Scalars(key))


@pytest.mark.parametrize("name", VIDEO_SCORE)
def test_video_model_export_reloads_with_the_trained_weights(name, request):
    tmp, _, cli = request.getfixturevalue(name)
    model = VideoTextModel.from_pretrained(exported(tmp, name))
    trained = cli.model.model.state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(trained)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    config = json.loads((exported(tmp, name) / "config.json").read_text())["lit_safe_video"]
    assert (config["num_frames"], config["frame_size"]) == (8, 32)
    if name == "video_moderation":
        assert model.head == "moderation" and model.categories == list(SAFESORA_CATEGORIES)
    else:
        assert model.head == "score" and model.score_type == name.removeprefix("video_")
    assert (exported(tmp, name) / "tokenizer.json").is_file()


def test_diffusion_export_reloads_with_the_trained_weights(diffusion_dpo):
    tmp, _, cli = diffusion_dpo
    model = load_video_diffusion(str(exported(tmp, "diffusion_dpo")))
    for part in ("unet", "vae", "text_encoder"):
        trained = getattr(cli.model.model, part).state_dict()
        loaded = getattr(model, part).state_dict()
        assert set(loaded) == set(trained), part
        for key, value in trained.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=f"{part}.{key}")
    # the policy moved away from the frozen reference it started as
    reference = cli.model.reference.state_dict()
    assert any(not torch.equal(value, reference[key]) for key, value in model.unet.state_dict().items())


@pytest.mark.parametrize("name", CAUSAL_LM)
def test_prompt_augmenter_export_is_a_causal_lm_with_the_trained_logits(name, request):
    tmp, _, cli = request.getfixturevalue(name)
    model = AutoModelForCausalLM.from_pretrained(exported(tmp, name)).eval()
    tokenizer = load_tokenizer(str(exported(tmp, name)))
    batch = tokenizer([REWRITE_TEMPLATE.format(prompt="a dog running on a beach")], return_tensors="pt")
    trained = cli.model.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained(**batch).logits, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- test, predict, arena
def test_test_of_the_video_cost_model_from_its_last_checkpoint(video_cost, capsys):
    tmp, config, _ = video_cost
    capsys.readouterr()
    cli = run(["test", "--config", str(config), "--ckpt_path", str(tmp / "checkpoints" / "last.ckpt")])
    accuracy = float(cli.trainer.callback_metrics["test/accuracy"])
    assert 0 <= accuracy <= 1
    assert math.isfinite(float(cli.trainer.callback_metrics["test/loss"]))
    assert "test/accuracy" in capsys.readouterr().out  # Lightning's results table


def test_predict_of_the_video_moderation_model_on_a_jsonl_of_videos(video_moderation, video_data, tmp_path):
    tmp, config, _ = video_moderation
    root = SafeSoraDataModule(tokenizer="tiny", source="synthetic", view="moderation", synthetic_rows=ROWS,
                              prepared_dir=str(video_data)).synthetic_dataset()
    with gzip.open(root / "label" / "config-test.json.gz", "rt") as f:
        videos = json.load(f)[:5]
    assert len(videos) == 5
    # an absolute path, and one relative to the prediction file's folder; a blank line counts in the line numbers
    (tmp_path / "clips").mkdir()
    shutil.copy(root / videos[0]["video_path"], tmp_path / "clips" / "first.mp4")
    lines = [json.dumps({"prompt": videos[0]["prompt_text"], "video_path": "clips/first.mp4"}), ""]
    lines += [json.dumps({"prompt": v["prompt_text"], "video_path": str(root / v["video_path"])}) for v in videos[1:]]
    inputs = tmp_path / "videos.jsonl"
    inputs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "moderation.jsonl"
    run(["predict", "--config", str(config), "--ckpt_path", str(tmp / "checkpoints" / "last.ckpt"),
         "--data.predict_file", str(inputs),
         "--trainer.callbacks+=lit_safe.callbacks.predictions.JsonlPredictionWriter",
         "--trainer.callbacks.output_path", str(out)])
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["line"] for w in written] == [1, 3, 4, 5, 6]
    assert set(written[0]) == {"line", "flagged", "unsafe_prob", "categories", "detected"}
    for w in written:
        assert list(w["categories"]) == list(SAFESORA_CATEGORIES)
        assert all(0 <= p <= 1 for p in w["categories"].values()) and 0 <= w["unsafe_prob"] <= 1
        assert w["flagged"] == (w["unsafe_prob"] >= 0.5)
        assert set(w["detected"]) == {c for c, p in w["categories"].items() if p >= 0.5}
    # the exported model on the same videos, read by hand, gives the same probabilities
    model = VideoTextModel.from_pretrained(exported(tmp, "video_moderation")).eval()
    tokenizer = load_tokenizer(str(exported(tmp, "video_moderation")))
    ids, _ = encode_prompt_texts(tokenizer, [v["prompt_text"] for v in videos], "{prompt}", 77)
    input_ids, mask = pad_right(ids, tokenizer.pad_token_id)
    frames = torch.stack([to_batch_layout(read_video(root / v["video_path"], model.num_frames, model.frame_size))
                          for v in videos])
    with torch.no_grad():
        decided = model.decide(model(input_ids, mask, frames))
    torch.testing.assert_close(torch.tensor([w["unsafe_prob"] for w in written]), decided["unsafe_prob"],
                               rtol=0, atol=1e-5)


def test_video_arena_with_the_exports(video_cost, video_reward, prompt_augmenter_dpo, tmp_path, capsys):
    out = tmp_path / "arena"
    augmenter = str(exported(prompt_augmenter_dpo[0], "prompt_augmenter_dpo"))
    summary = run(["video-arena", "--rewriter_a", "none", "--rewriter_b", augmenter,
                   "--reward_model", str(exported(video_reward[0], "video_reward")),
                   "--cost_model", str(exported(video_cost[0], "video_cost")),
                   "--generator", "synthetic", "--prompts", "synthetic", "--num_prompts", "4", "--output", str(out)])
    arena = json.loads((out / "arena.json").read_text())
    assert arena["summary"] == summary and summary["prompts"] == 4
    assert summary["rewriter_b"] == augmenter
    rows = arena["rewrites"]
    assert len(rows) == 4 and len({r["prompt"] for r in rows}) == 4
    assert all(r["rewrite_a"] == r["prompt"] for r in rows)  # side A sends the user prompt as is
    assert all(isinstance(r["rewrite_b"], str) and r["rewrite_b"].strip() for r in rows)
    assert all(math.isfinite(r[key]) for r in rows for key in ("reward_a", "cost_a", "reward_b", "cost_b"))
    videos = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert videos == [f"videos/{side}/{i}.mp4" for side in "ab" for i in range(4)]
    assert [r["video_a"] for r in rows] == [f"videos/a/{i}.mp4" for i in range(4)]
    assert read_video(out / rows[0]["video_b"], 4, 32).shape == (4, 32, 32, 3)
    for side in ("a", "b"):
        assert summary[side]["reward_mean"] == pytest.approx(sum(r[f"reward_{side}"] for r in rows) / 4, abs=1e-5)
        assert summary[side]["safe_share"] == sum(r[f"cost_{side}"] <= 0 for r in rows) / 4
    assert "Arena on 4 prompts" in capsys.readouterr().out
