"""Tests of lit_safe.models.video_diffusion: the tiny preset (deterministic, shapes), frame-by-frame VAE encoding,
prompt padding, the diffusers layout (round trip, TextToVideoSDPipeline loads it and samples what
VideoDiffusion.sample samples), LoRA (reference = adapters disabled, merged export), gradient checkpointing and the
FSDP units."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json

import pytest
import torch

from lit_safe.models.lora import merge_lora_state_dict
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from lit_safe.models.video_diffusion import (
    UNET_BLOCK_CLASSES,
    fsdp_blocks,
    load_video_diffusion,
    pair_noise,
    sample_noise,
    tokenizer_path,
)


@pytest.fixture(scope="module")
def tiny():
    return load_video_diffusion("tiny")


def _frames(batch=2, frames=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 3, size, size), generator=gen, dtype=torch.uint8)


def _inputs(model, batch=2, frames=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, model.latent_channels, frames, 8, 8, generator=gen)
    timesteps = torch.tensor([3, 700][:batch])
    ids, mask = model.tokenize(["a red kite over the sea", "a dog"][:batch])
    return latents, timesteps, ids, mask


def test_tiny_preset_is_deterministic_and_sized(tiny):
    again = load_video_diffusion("tiny")
    for (name, a), (_, b) in zip(tiny.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    other = load_video_diffusion("tiny", seed=1)
    assert not torch.equal(other.unet.conv_in.weight, tiny.unet.conv_in.weight)
    assert tuple(tiny.unet.config.block_out_channels) == (32, 64)
    assert tiny.text_encoder.config.hidden_size == tiny.unet.config.cross_attention_dim == 32
    assert tiny.text_encoder.config.vocab_size == len(load_tokenizer("tiny"))
    assert tiny.context_length == 77 and tiny.vae_scale_factor == 2
    assert tiny.scheduler.config.num_train_timesteps == 1000 and tiny.scheduler.config.prediction_type == "epsilon"
    assert tokenizer_fingerprint(tiny.tokenizer) == tokenizer_fingerprint(load_tokenizer("tiny"))
    # Only the UNet trains.
    assert all(p.requires_grad for p in tiny.unet.parameters())
    assert not any(p.requires_grad for p in [*tiny.vae.parameters(), *tiny.text_encoder.parameters()])


def test_frozen_parts_stay_in_eval_mode(tiny):
    tiny.train()
    assert tiny.unet.training and not tiny.vae.training and not tiny.text_encoder.training


def test_encode_video_is_frame_by_frame_and_scaled(tiny):
    frames = _frames()
    latents = tiny.encode_video(frames, sample=False)
    assert latents.shape == (2, 4, 3, 8, 8)  # (B, C, F, H/2, W/2)
    # Frame f of video b alone, through the VAE by hand: [-1, 1] input, posterior mean, times the scaling factor.
    one = frames[1, 2].float().div(255).sub(0.5).div(0.5).unsqueeze(0)
    with torch.no_grad():
        expected = tiny.vae.encode(one).latent_dist.mean[0] * tiny.vae.config.scaling_factor
    torch.testing.assert_close(latents[1, :, 2], expected, atol=1e-5, rtol=1e-5)
    # Chunking does not change anything; a seeded posterior draw is reproducible.
    torch.testing.assert_close(tiny.encode_video(frames, sample=False, chunk_size=2), latents)
    a = tiny.encode_video(frames, generator=torch.Generator().manual_seed(3))
    b = tiny.encode_video(frames, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, latents)


def test_decode_latents_returns_uint8_frames(tiny):
    latents = tiny.encode_video(_frames(), sample=False)
    with torch.no_grad():
        frames = tiny.decode_latents(latents)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 3, 3, 16, 16)


def test_encode_text_pads_to_the_context_like_the_pipeline(tiny):
    tok = tiny.tokenizer
    short = tok(["a dog"], return_tensors="pt")  # (1, 3): bos + 2 tokens, as a data module would give it
    with torch.no_grad():
        from_short = tiny.encode_text(short["input_ids"], short["attention_mask"])
        ids, mask = tiny.tokenize(["a dog"])
        from_full = tiny.encode_text(ids, mask)
    assert from_short.shape == (1, 77, 32)
    assert ids[0, 3:].eq(tok.pad_token_id).all()
    torch.testing.assert_close(from_short, from_full)


def test_save_and_load_round_trip_gives_identical_predictions(tiny, tmp_path):
    latents, timesteps, ids, mask = _inputs(tiny)
    with torch.no_grad():
        before = tiny.denoise(latents, timesteps, tiny.encode_text(ids, mask))
    tiny.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_index.json", "scheduler", "text_encoder",
                                                          "tokenizer", "unet", "vae"]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline" and index["unet"] == ["diffusers", "UNet3DConditionModel"]
    loaded = load_video_diffusion(str(tmp_path))
    with torch.no_grad():
        after = loaded.denoise(latents, timesteps, loaded.encode_text(ids, mask))
    assert torch.equal(before, after)
    assert tokenizer_fingerprint(loaded.tokenizer) == tokenizer_fingerprint(tiny.tokenizer)
    assert tokenizer_path(str(tmp_path)) == str(tmp_path / "tokenizer")
    assert loaded.scheduler.config.num_train_timesteps == 1000


def test_diffusers_pipeline_loads_the_export_and_samples_the_same_video(tiny, tmp_path):
    from diffusers import TextToVideoSDPipeline

    tiny.save_pretrained(tmp_path)
    pipe = TextToVideoSDPipeline.from_pretrained(str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a cat on a sofa"], num_frames=2, height=16, width=16, num_inference_steps=3, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(0), output_type="pt").frames  # float (B, F, 3, H, W) in [0, 1]
    ours = tiny.sample(["a cat on a sofa"], num_frames=2, height=16, width=16, num_inference_steps=3,
                       guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
    assert ours.dtype == torch.uint8 and ours.shape == (1, 2, 3, 16, 16) == out.shape
    assert (ours.float() - out * 255).abs().max() <= 1.0


def test_sample_shapes_and_reproducibility(tiny):
    a = tiny.sample(["a", "b c"], num_frames=3, height=16, width=16, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(5))
    b = tiny.sample(["a", "b c"], num_frames=3, height=16, width=16, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 3, 3, 16, 16) and a.dtype == torch.uint8 and torch.equal(a, b)
    unguided = tiny.sample(["a"], num_frames=1, height=16, width=16, num_inference_steps=2, guidance_scale=1.0)
    assert unguided.shape == (1, 1, 3, 16, 16)


def _lora_model(rank=4, alpha=8.0):
    model = load_video_diffusion("tiny")
    base = load_video_diffusion("tiny")
    model.add_lora(rank, alpha)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # B starts at 0 (the adapters change nothing): give them weight
        for name, param in model.unet.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model, base


def test_lora_trains_only_adapters_and_disabled_adapters_are_the_base_model():
    model, base = _lora_model()
    trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert model.lora_scaling == 2.0
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    latents, timesteps, ids, mask = _inputs(model)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        with model.adapters_disabled():
            disabled = model.denoise(latents, timesteps, text)
        enabled = model.denoise(latents, timesteps, text)
        expected = base.denoise(latents, timesteps, text)
    torch.testing.assert_close(disabled, expected, atol=1e-6, rtol=1e-6)
    assert (enabled - expected).abs().max() > 1e-3
    # The toggle leaves requires_grad as it found it.
    assert [n for n, p in model.unet.named_parameters() if p.requires_grad] == trainable


def test_merged_lora_export_equals_the_adapted_model(tmp_path):
    model, _ = _lora_model()
    latents, timesteps, ids, mask = _inputs(model)
    with torch.no_grad():
        adapted = model.denoise(latents, timesteps, model.encode_text(ids, mask))
    model.save_pretrained(tmp_path)
    loaded = load_video_diffusion(str(tmp_path))
    assert not any(".lora_" in k or "base_layer" in k for k in loaded.unet.state_dict())
    with torch.no_grad():
        merged = loaded.denoise(latents, timesteps, loaded.encode_text(ids, mask))
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_merge_lora_state_dict_by_hand():
    # W (2x3) + 0.5 * B (2x1) @ A (1x3)
    state = {
        "attn.to_q.base_layer.weight": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        "attn.to_q.base_layer.bias": torch.tensor([0.5, -0.5]),
        "attn.to_q.lora_A.default.weight": torch.tensor([[1.0, 2.0, 3.0]]),
        "attn.to_q.lora_B.default.weight": torch.tensor([[2.0], [-1.0]]),
        "norm.weight": torch.tensor([1.0]),
    }
    merged = merge_lora_state_dict(state, 0.5)
    assert sorted(merged) == ["attn.to_q.bias", "attn.to_q.weight", "norm.weight"]
    torch.testing.assert_close(merged["attn.to_q.weight"], torch.tensor([[2.0, 2.0, 3.0], [-0.5, 0.0, -1.5]]))
    torch.testing.assert_close(merged["attn.to_q.bias"], torch.tensor([0.5, -0.5]))


def test_gradient_checkpointing_keeps_outputs_gradients_and_keys():
    plain, checkpointed = load_video_diffusion("tiny"), load_video_diffusion("tiny")
    checkpointed.enable_gradient_checkpointing()
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    latents, timesteps, ids, mask = _inputs(plain)
    text = plain.encode_text(ids, mask).detach()
    grads = []
    for model in (plain, checkpointed):
        model.unet.zero_grad()
        out = model.denoise(latents, timesteps, text)
        out.pow(2).mean().backward()
        grads.append((out.detach(), model.unet.conv_in.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-6, rtol=1e-5)
    # Module names are unchanged (FSDP2 loads full checkpoints by parameter name), and so are the FSDP units.
    assert [n for n, _ in checkpointed.unet.named_modules()] == [n for n, _ in plain.unet.named_modules()]
    assert len(fsdp_blocks(checkpointed.unet)) == len(fsdp_blocks(plain.unet))
    # Without gradients (reference, sampling) the checkpointed blocks run as usual.
    with torch.no_grad():
        torch.testing.assert_close(checkpointed.denoise(latents, timesteps, text), grads[0][0])


def test_fsdp_blocks_are_the_resnet_transformer_and_temporal_blocks(tiny):
    blocks = fsdp_blocks(tiny.unet)
    names = {type(b).__name__ for b in blocks}
    assert names == set(UNET_BLOCK_CLASSES)
    ids = {id(b) for b in blocks}
    for block in blocks:  # no block inside another
        assert not any(id(m) in ids for m in list(block.modules())[1:])
    covered = sum(p.numel() for b in blocks for p in b.parameters())
    assert covered > 0.8 * sum(p.numel() for p in tiny.unet.parameters())


def test_fsdp1_policy_wraps_the_unet_blocks(tiny):
    from lit_safe.models.sharding import TransformerBlockPolicy

    policy = TransformerBlockPolicy(class_names=list(UNET_BLOCK_CLASSES))
    policy._resolve(tiny.unet)
    assert {c.__name__ for c in policy._module_classes} == set(UNET_BLOCK_CLASSES)


def test_sample_noise_draws_noise_then_timesteps_from_the_generator():
    latents = torch.zeros(3, 4, 2, 5, 5, dtype=torch.float64)
    noise, timesteps = sample_noise(latents, 1000, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn(latents.shape, generator=gen, dtype=torch.float64)
    assert torch.equal(noise, expected) and noise.dtype == torch.float64
    assert torch.equal(timesteps, torch.randint(0, 1000, (3,), generator=gen))
    torch.manual_seed(1)  # without a generator: the global stream
    noise, timesteps = sample_noise(latents, 10)
    torch.manual_seed(1)
    assert torch.equal(noise, torch.randn_like(latents)) and torch.equal(timesteps, torch.randint(0, 10, (3,)))


def test_pair_noise_shares_noise_and_timestep_within_each_pair():
    latents_w = torch.zeros(3, 4, 2, 5, 5)
    noise, timesteps = pair_noise(latents_w, 1000, torch.Generator().manual_seed(0))
    assert noise.shape == (6, 4, 2, 5, 5) and timesteps.shape == (6,) and timesteps.dtype == torch.long
    assert torch.equal(noise[:3], noise[3:]) and torch.equal(timesteps[:3], timesteps[3:])
    assert not torch.equal(noise[0], noise[1])  # different pairs, different draws
    assert int(timesteps.min()) >= 0 and int(timesteps.max()) < 1000
    again, again_t = pair_noise(latents_w, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(again, noise) and torch.equal(again_t, timesteps)


def test_noise_latents_targets_the_noise_or_the_velocity(tiny):
    import copy

    latents, timesteps, _, _ = _inputs(tiny)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    noisy, target = tiny.noise_latents(latents, noise, timesteps)
    alpha = tiny.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, alpha.sqrt() * latents + (1 - alpha).sqrt() * noise)
    assert target is noise  # epsilon prediction
    v_model = copy.copy(tiny)
    v_model.scheduler = type(tiny.scheduler).from_config({**tiny.scheduler.config, "prediction_type": "v_prediction"})
    _, velocity = v_model.noise_latents(latents, noise, timesteps)
    torch.testing.assert_close(velocity, alpha.sqrt() * noise - (1 - alpha).sqrt() * latents)
