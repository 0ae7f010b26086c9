"""Tests of DiffusionDPOModule on the tiny text-to-video preset: log 2 at initialisation, one timestep and one noise
per pair, a reference that gets no gradient and does not move, LoRA's reference = the base UNet, the SFT-on-winners
baseline, reproducible evaluation, and a short Lightning fit on an in-memory pair loader (checkpoint, export), with
the VideoSamples callback (TensorBoard filmstrips, GIF and mp4 files) that leaves the training numbers alone."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math
from dataclasses import replace

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lit_safe.callbacks.samples import VideoSamples, encode_gif
from lit_safe.models.tokenizer import load_tokenizer
from lit_safe.models.video_diffusion import load_video_diffusion
from lit_safe.modules.diffusion_dpo import DEFAULT_OPTIMIZER, DiffusionDPOModule

PROMPTS = ["a red kite over the sea", "a dog runs on the beach", "rain on a window", "a city at night"]


def _pairs(count=4, frames=2, size=16, seed=0) -> list[dict]:
    """Pair items as the SafeSora pair views give them: prompt tokens and two uint8 videos, the first preferred."""
    tokenizer = load_tokenizer("tiny")
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        videos = torch.randint(0, 256, (2, frames, 3, size, size), generator=gen, dtype=torch.uint8)
        items.append({"ids": torch.tensor(tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"]), "first": videos[0],
                      "second": videos[1], "row": i})
    return items


def collate(items: list[dict]) -> dict:
    """The contract's pair batch: input_ids/attention_mask (B, L) right padded, frames (2B, F, 3, H, W) firsts first."""
    length = max(len(item["ids"]) for item in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)  # 0 = the tiny tokenizer's pad
    mask = torch.zeros_like(ids)
    for i, item in enumerate(items):
        ids[i, : len(item["ids"])] = item["ids"]
        mask[i, : len(item["ids"])] = 1
    frames = torch.stack([item["first"] for item in items] + [item["second"] for item in items])
    sign = torch.zeros(len(items), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "frames": frames,
            "row": torch.tensor([item["row"] for item in items]), "first_sign": sign, "second_sign": sign}


class PairData(LightningDataModule):
    def __init__(self, tokenizer: str = "tiny", batch_size: int = 2) -> None:
        super().__init__()
        self.tokenizer = load_tokenizer(tokenizer)
        self.batch_size = batch_size
        self.train_items, self.val_items = _pairs(4, seed=0), _pairs(2, seed=1)

    def train_dataloader(self):
        return DataLoader(self.train_items, batch_size=self.batch_size, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(self.val_items, batch_size=self.batch_size, collate_fn=collate)


def _module(**kwargs) -> DiffusionDPOModule:
    module = DiffusionDPOModule(**kwargs)
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def copy_module():
    return _module(beta=50.0)


@pytest.fixture(scope="module")
def batch():
    return collate(_pairs(2))


def test_loss_is_log_2_and_accuracy_0_at_initialisation(copy_module, batch):
    terms = copy_module.dpo_terms(batch, torch.Generator().manual_seed(0))
    assert terms["loss"].item() == pytest.approx(math.log(2.0), abs=1e-7)
    torch.testing.assert_close(terms["policy_w"], terms["ref_w"])
    torch.testing.assert_close(terms["policy_l"], terms["ref_l"])
    values = copy_module.summary(terms)
    assert values["implicit_accuracy"].item() == 0.0 and values["error_gap"].item() == 0.0


def test_training_step_noises_winner_and_loser_with_the_same_t_and_noise(copy_module, batch, monkeypatch):
    calls = []
    scheduler = copy_module.model.scheduler
    original = scheduler.add_noise

    def spy(latents, noise, timesteps):
        calls.append((latents, noise, timesteps))
        return original(latents, noise, timesteps)

    monkeypatch.setattr(scheduler, "add_noise", spy)
    copy_module.dpo_terms(batch)  # training draws from the global RNG
    (latents, noise, timesteps), = calls
    assert latents.shape[0] == 4  # 2 pairs: 2 winners then 2 losers
    assert torch.equal(noise[:2], noise[2:]) and torch.equal(timesteps[:2], timesteps[2:])
    assert not torch.equal(latents[:2], latents[2:])


def test_one_step_trains_the_unet_and_leaves_the_reference_alone(batch):
    module = _module(beta=50.0)
    reference_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    unet_before = {k: v.clone() for k, v in module.model.unet.state_dict().items()}
    frozen_before = {k: v.clone() for k, v in module.model.vae.state_dict().items()}
    params = [p for p in module.model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(p.numel() for p in module.model.unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = module.dpo_terms(batch)["loss"]
    loss.backward()
    assert all(p.grad is None for p in module.reference.parameters())
    assert all(p.grad is None for p in module.model.vae.parameters())
    assert all(p.grad is None for p in module.model.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.unet.parameters())
    optimizer.step()
    changed = [k for k, v in module.model.unet.state_dict().items() if not torch.equal(v, unet_before[k])]
    assert len(changed) > 0.5 * len(unet_before)
    assert all(torch.equal(v, reference_before[k]) for k, v in module.reference.state_dict().items())
    assert all(torch.equal(v, frozen_before[k]) for k, v in module.model.vae.state_dict().items())
    # The policy moved away from the reference: the loss is no longer log 2 on the same noise.
    terms = module.dpo_terms(batch, torch.Generator().manual_seed(0))
    assert abs(terms["loss"].item() - math.log(2.0)) > 1e-6


def test_lora_reference_is_the_base_unet_and_only_adapters_train(batch):
    module = _module(reference="lora", lora_rank=4, beta=50.0)
    assert module.reference is None
    base = load_video_diffusion("tiny")
    params = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert params and all(".lora_" in n for n in params)
    # At init B = 0: the policy is the reference, the loss log 2.
    assert module.dpo_terms(batch, torch.Generator().manual_seed(0))["loss"].item() == pytest.approx(math.log(2.0))
    optimizer = torch.optim.SGD([p for p in module.model.parameters() if p.requires_grad], lr=10.0)
    module.dpo_terms(batch)["loss"].backward()
    optimizer.step()
    latents = torch.randn(2, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([10, 900])
    with torch.no_grad():
        text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
        with module.reference_context():
            reference = module.model.denoise(latents, timesteps, text)
        policy = module.model.denoise(latents, timesteps, text)
        expected = base.denoise(latents, timesteps, text)
    torch.testing.assert_close(reference, expected, atol=1e-6, rtol=1e-6)
    assert (policy - expected).abs().max() > 0
    assert [n for n, p in module.model.named_parameters() if p.requires_grad] == params


def test_sft_objective_uses_only_the_preferred_videos(batch, monkeypatch):
    module = _module(objective="sft")
    seen = []
    original = module.model.encode_video

    def spy(frames, **kwargs):
        seen.append(frames)
        return original(frames, **kwargs)

    monkeypatch.setattr(module.model, "encode_video", spy)
    loss, errors = module.sft_loss(batch)
    assert len(seen) == 1 and torch.equal(seen[0], batch["frames"][:2])
    assert errors.shape == (2,) and loss.item() == pytest.approx(errors.mean().item())
    loss.backward()
    assert module.model.unet.conv_in.weight.grad is not None


def test_evaluation_is_reproducible_and_reports_dpo_metrics_for_sft_too(batch):
    for objective in ("dpo", "sft"):
        module = _module(objective=objective)
        module.evaluation_step(batch, 3, module.val_stats)
        first = module.val_stats.compute()
        module.val_stats.reset()
        module.evaluation_step(batch, 3, module.val_stats)
        second = module.val_stats.compute()
        # safe_preference_accuracy: NaN when the batch holds no pair of one safe and one unsafe video
        assert set(first) == {"loss", "dpo_loss", "implicit_accuracy", "error_gap", "reward_margin",
                              "policy_error_w", "policy_error_l", "ref_error_w", "ref_error_l",
                              "safe_preference_accuracy"}
        assert all(torch.allclose(first[k], second[k], rtol=0, atol=0, equal_nan=True) for k in first)
        expected = first["dpo_loss"] if objective == "dpo" else first["policy_error_w"]
        assert torch.equal(first["loss"], expected)


def test_predict_gives_implicit_rewards(copy_module, batch):
    out = copy_module.predict_step(batch, 0)
    assert set(out) == {"row", "first_reward", "second_reward"} and out["first_reward"].shape == (2,)
    assert torch.equal(out["first_reward"], torch.zeros(2))  # policy = reference
    single = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "frames": batch["frames"][:2], "line": torch.tensor([0, 1])}
    out = copy_module.predict_step(single, 0)
    assert set(out) == {"line", "policy_error", "ref_error", "implicit_reward"}
    assert out["implicit_reward"].shape == (2,)


def test_bad_batches_and_arguments_are_rejected(copy_module, batch):
    with pytest.raises(ValueError, match="2B videos"):
        copy_module.dpo_terms({**batch, "frames": batch["frames"][:2]})
    with pytest.raises(ValueError, match="objective"):
        DiffusionDPOModule(objective="ppo")
    with pytest.raises(ValueError, match="reference"):
        DiffusionDPOModule(reference="ema")
    with pytest.raises(ValueError, match="prompt"):
        VideoSamples(prompts=[])


def test_encode_gif_is_an_animated_gif():
    from io import BytesIO

    from PIL import Image

    frames = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    image = Image.open(BytesIO(encode_gif(frames)))
    assert image.format == "GIF" and image.n_frames == 3 and image.size == (8, 8)


def test_sample_videos_moves_no_random_stream(copy_module):
    state = torch.get_rng_state()
    videos = copy_module.sample_videos(["a kite"], 2, 16, 16, steps=2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert videos.shape == (1, 2, 3, 16, 16) and videos.dtype == torch.uint8
    assert torch.equal(copy_module.sample_videos(["a kite"], 2, 16, 16, steps=2, seed=3), videos)  # a fixed seed


def _fit(root, callbacks=()) -> tuple[DiffusionDPOModule, Trainer]:
    torch.manual_seed(0)
    module = DiffusionDPOModule(beta=50.0, optimizer=replace(DEFAULT_OPTIMIZER, lr=1e-4, warmup_ratio=0.0))
    logger = TensorBoardLogger(str(root), name="run", version=0)
    trainer = Trainer(max_steps=3, limit_val_batches=1, val_check_interval=2, logger=logger, accelerator="cpu",
                      devices=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=PairData())
    return module, trainer


def test_fit_logs_metrics_and_samples_checkpoints_and_exports(tmp_path):
    from io import BytesIO

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_safe.models.frames import read_video

    samples = VideoSamples(prompts=["a kite", "the sea"], every_n_steps=2, steps=2)
    module, trainer = _fit(tmp_path, [samples])
    metrics = trainer.logged_metrics
    for key in ("train/loss", "train/implicit_accuracy", "train/error_gap", "train/reward_margin",
                "train/policy_error_w", "train/policy_error_l", "train/ref_error_w", "train/ref_error_l",
                "val/loss", "val/implicit_accuracy", "val/error_gap", "train/grad_norm"):
        assert key in metrics, key
    assert math.isfinite(float(metrics["val/loss"]))

    run = tmp_path / "run" / "version_0"
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    assert {"samples/0", "samples/1"} <= set(events.Tags()["images"])
    # before training, then every 2 optimiser steps (the step-2 ones inside the training random stream)
    assert [e.step for e in events.Images("samples/0")] == [0, 2]
    assert sorted(p.name for p in (run / "samples").glob("step0000002_*")) == [
        "step0000002_0.gif", "step0000002_0.mp4", "step0000002_1.gif", "step0000002_1.mp4"]
    final = samples.log_samples(trainer, module, torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8))  # at step 3
    strip = EventAccumulator(str(run), size_guidance={"images": 0}).Reload().Images("samples/0")[-1]
    assert strip.step == 3 and (strip.width, strip.height) == (2 * 16, 16)  # the 2 frames side by side
    pixels = torch.from_numpy(np.array(Image.open(BytesIO(strip.encoded_image_string))))
    assert torch.equal(pixels, torch.cat(list(final[0]), dim=-1).permute(1, 2, 0))  # PNG: lossless
    gif = Image.open(run / "samples" / "step0000003_1.gif")
    assert gif.n_frames == 2 and gif.size == (16, 16)
    mp4 = read_video(run / "samples" / "step0000003_1.mp4", num_frames=2, size=16)
    assert mp4.shape == (2, 16, 16, 3)
    # H.264 with 4:2:0 chroma is lossy on 16 x 16 noise-like frames: compare the frames' mean brightness
    assert torch.allclose(torch.from_numpy(mp4).float().mean((1, 2, 3)), final[1].float().mean((1, 2, 3)), atol=4.0)

    # The samples draw from no random stream: without the callback the run trains and logs the same numbers.
    plain, plain_trainer = _fit(tmp_path / "plain")
    trained = module.model.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in plain.model.unet.state_dict().items())
    assert all(torch.equal(plain_trainer.logged_metrics[k], v) for k, v in metrics.items())

    # The checkpoint restores policy and reference; the reference is still the initial UNet.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    restored = DiffusionDPOModule.load_from_checkpoint(tmp_path / "last.ckpt")
    initial = load_video_diffusion("tiny").unet.state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in restored.reference.state_dict().items())
    assert all(torch.equal(v, trained[k]) for k, v in restored.model.unet.state_dict().items())
    assert any(not torch.equal(v, initial[k]) for k, v in trained.items())

    module.export_pretrained(tmp_path / "export")
    exported = load_video_diffusion(str(tmp_path / "export"))
    assert all(torch.equal(v, trained[k]) for k, v in exported.unet.state_dict().items())


def test_fit_with_lora_exports_the_merged_policy(tmp_path):
    module = DiffusionDPOModule(reference="lora", lora_rank=4, beta=50.0,
                                optimizer=replace(DEFAULT_OPTIMIZER, lr=1e-2, warmup_ratio=0.0))
    trainer = Trainer(max_steps=1, limit_val_batches=0, logger=False, accelerator="cpu", devices=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=PairData())
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    ids, mask = module.model.tokenize(["a kite"])
    with torch.no_grad():
        adapted = module.model.denoise(latents, torch.tensor([400]), module.model.encode_text(ids, mask))
    module.export_pretrained(tmp_path / "export")
    exported = load_video_diffusion(str(tmp_path / "export"))
    with torch.no_grad():
        merged = exported.denoise(latents, torch.tensor([400]), exported.encode_text(ids, mask))
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    base = load_video_diffusion("tiny")
    with torch.no_grad():
        assert (merged - base.denoise(latents, torch.tensor([400]), base.encode_text(ids, mask))).abs().max() > 0


def test_a_data_module_with_another_tokenizer_is_refused():
    trainer = Trainer(max_steps=1, logger=False, accelerator="cpu", devices=1, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="tokenizer"):
        trainer.fit(DiffusionDPOModule(), datamodule=PairData(tokenizer="small"))
