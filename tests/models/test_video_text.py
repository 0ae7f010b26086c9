"""The text-video model: shapes, the frame normalisation it applies, frozen parts, and the Hugging Face round trip."""

import json

import pytest
import torch
from transformers import AutoModel

from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from lit_safe.models.video_text import (
    CLIP_MEAN,
    CLIP_STD,
    COST_SIGN,
    VideoTextModel,
    build_video_text_model,
    image_statistics,
    video_pair_scores,
)

CATEGORIES = ["porn", "violence", "hate", "terrorism", "contraband", "controversial", "racism",
              "other_discrimination", "animal_abuse", "child_abuse", "crime", "other_harmful"]


def prompts(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def random_frames(n, f=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, f, 3, size, size), dtype=torch.uint8, generator=g)


def tiny(head="score", **kwargs):
    torch.manual_seed(0)
    return build_video_text_model("tiny", load_tokenizer("tiny"), head, num_frames=4, frame_size=32, **kwargs).eval()


def test_score_and_moderation_shapes(tiny_tokenizer):
    ids, mask = prompts(tiny_tokenizer, ["a cat on a skateboard", "fireworks over a city at night, slow motion"])
    frames = random_frames(2)
    with torch.no_grad():
        scores = tiny("score")(ids, mask, frames)
        moderation = tiny("moderation", categories=CATEGORIES)(ids, mask, frames)
    assert scores.scores.shape == (2,) and scores.scores.dtype == torch.float32
    assert moderation.category_logits.shape == (2, 12) and moderation.unsafe_logits.shape == (2,)
    assert moderation.severity_logits is None


def test_a_prompt_shared_by_its_two_videos_scores_as_if_repeated(tiny_tokenizer):
    """Pair batches: B prompts, 2B videos (the B first, then the B second); each prompt is encoded once."""
    model = tiny()
    ids, mask = prompts(tiny_tokenizer, ["a red balloon", "a storm at sea, waves crashing on rocks"])
    frames = random_frames(4)
    with torch.no_grad():
        first, second, _ = video_pair_scores(model, {"input_ids": ids, "attention_mask": mask, "frames": frames})
        repeated = model(ids.repeat(2, 1), mask.repeat(2, 1), frames).scores
    torch.testing.assert_close(torch.cat([first, second]), repeated)
    with pytest.raises(ValueError, match="whole number of videos per prompt"):
        model(ids, mask, frames[:3])


def test_padding_does_not_change_the_score(tiny_tokenizer):
    model = tiny()
    ids, mask = prompts(tiny_tokenizer, ["a dog", "a dog running on the beach at sunset"])
    alone_ids, alone_mask = prompts(tiny_tokenizer, ["a dog"])
    frames = random_frames(2)
    with torch.no_grad():
        padded = model(ids, mask, frames).scores[0]
        alone = model(alone_ids, alone_mask, frames[:1]).scores[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_frames_are_normalised_with_the_clip_statistics_and_resized(tiny_tokenizer):
    """Constant frames reach the vision encoder as (v / 255 - mean) / std per channel, resized to its image size."""
    model = tiny()
    seen = {}

    def grab(module, args, kwargs):
        seen["pixels"] = kwargs["pixel_values"].detach().clone()

    handle = model.backbone.vision_model.register_forward_pre_hook(grab, with_kwargs=True)
    frames = torch.zeros(1, 2, 3, 16, 16, dtype=torch.uint8)  # 16x16 frames, the vision model takes 32x32
    frames[:, 0] = 255
    frames[:, 1, 1] = 51  # second frame: R = 0, G = 0.2, B = 0
    ids, mask = prompts(tiny_tokenizer, ["a white flash"])
    with torch.no_grad():
        model(ids, mask, frames)
    handle.remove()
    pixels = seen["pixels"]
    assert pixels.shape == (2, 3, 32, 32)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    white = (1 - mean) / std  # (1 - 0.4815) / 0.2686 = 1.9303 for red
    second = (torch.tensor([0.0, 0.2, 0.0]) - mean) / std  # (0.2 - 0.4578) / 0.2613 = -0.9867 for green
    assert white[0].item() == pytest.approx(1.9303, abs=1e-4)
    assert second[1].item() == pytest.approx(-0.9867, abs=1e-4)
    torch.testing.assert_close(pixels[0], white.view(3, 1, 1).expand(3, 32, 32))
    torch.testing.assert_close(pixels[1], second.view(3, 1, 1).expand(3, 32, 32))


def test_frames_must_be_uint8(tiny_tokenizer):
    ids, mask = prompts(tiny_tokenizer, ["x"])
    with pytest.raises(ValueError, match="uint8"):
        tiny()(ids, mask, torch.zeros(1, 2, 3, 32, 32))


def test_prompts_longer_than_the_text_encoder_are_cut(tiny_tokenizer):
    model = tiny()
    ids = torch.randint(3, 2000, (1, 120))
    with torch.no_grad():
        full = model(ids, torch.ones_like(ids), random_frames(1)).scores
        cut = model(ids[:, :77], torch.ones(1, 77, dtype=torch.long), random_frames(1)).scores
    torch.testing.assert_close(full, cut)


def test_too_many_frames_are_refused(tiny_tokenizer):
    ids, mask = prompts(tiny_tokenizer, ["x"])
    with pytest.raises(ValueError, match="temporal positions for 4"):
        tiny()(ids, mask, random_frames(1, f=5))


def test_unused_contrastive_parts_and_a_frozen_backbone_get_no_gradient(tiny_tokenizer):
    ids, mask = prompts(tiny_tokenizer, ["a city"])
    for freeze in (False, True):
        model = tiny(freeze_backbone=freeze).train()
        model(ids, mask, random_frames(2)).scores.sum().backward()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all(model.get_parameter(n).grad is not None for n in trainable)  # DDP: every trainable one is used
        assert not {n for n in trainable if n.startswith(("backbone.logit_scale", "backbone.visual_projection",
                                                          "backbone.text_projection"))}
        backbone = {n for n in trainable if n.startswith("backbone.")}
        assert (not backbone) if freeze else backbone
        assert any(n.startswith("fusion.") for n in trainable) and "score_head.weight" in trainable
    assert "backbone.logit_scale" in dict(model.named_buffers())  # FSDP2 refuses 0-d parameters


@pytest.mark.parametrize("head", ["score", "cost", "moderation"])
def test_save_and_load_round_trip_exactly(tmp_path, tiny_tokenizer, head):
    kwargs = {"categories": CATEGORIES, "decision": {"flag_rule": "categories", "category_thresholds": {"porn": 0.3}}}
    model = tiny("moderation", **kwargs) if head == "moderation" else tiny("score", score_type="reward"
                                                                                if head == "score" else "cost")
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    entry = config["lit_safe_video"]
    assert entry["num_frames"] == 4 and entry["frame_size"] == 32 and entry["image_mean"] == pytest.approx(CLIP_MEAN)
    assert entry["fusion_layers"] == 2 and entry["head"] == ("moderation" if head == "moderation" else "score")
    if head == "cost":
        assert entry["score_type"] == "cost" and entry["cost_sign"] == COST_SIGN
    if head == "moderation":
        assert entry["categories"] == CATEGORIES and entry["decision"]["flag_rule"] == "categories"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = VideoTextModel.from_pretrained(tmp_path / "m").eval()
    assert tokenizer_fingerprint(load_tokenizer(str(tmp_path / "m"))) == tokenizer_fingerprint(tiny_tokenizer)
    ids, mask = prompts(tiny_tokenizer, ["a cat", "a dog in the snow"])
    frames = random_frames(4, seed=3)
    with torch.no_grad():
        before, after = model(ids, mask, frames), loaded(ids, mask, frames)
    for a, b in zip(before, after):
        if a is not None:
            assert torch.equal(a, b)
    if head == "moderation":
        assert loaded.decide(after)["detected"].shape == (4, 12)
    # the fine-tuned dual encoder alone loads with plain transformers
    backbone = AutoModel.from_pretrained(tmp_path / "m")
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_a_saved_model_continues_only_as_the_same_kind(tmp_path, tiny_tokenizer):
    tiny("score", score_type="cost").save_pretrained(tmp_path / "cost", tokenizer=tiny_tokenizer)
    again = build_video_text_model(str(tmp_path / "cost"), tiny_tokenizer, "score", score_type="cost", num_frames=4)
    assert again.score_type == "cost" and again.num_frames == 4
    with pytest.raises(ValueError, match="needs"):
        build_video_text_model(str(tmp_path / "cost"), tiny_tokenizer, "score", score_type="reward", num_frames=4)
    with pytest.raises(ValueError, match="temporal positions for 4 frames"):
        build_video_text_model(str(tmp_path / "cost"), tiny_tokenizer, "score", score_type="cost", num_frames=8)


def test_moderation_decision_rules(tiny_tokenizer):
    from lit_safe.models.moderation_model import ModerationOutput

    model = tiny("moderation", categories=CATEGORIES[:2], decision={"flag_rule": "unsafe", "flag_threshold": 0.7})
    out = ModerationOutput(torch.tensor([[2.0, -2.0], [-2.0, -2.0]]), torch.tensor([0.0, 1.0]), None)
    d = model.decide(out)  # P(unsafe) = 0.5, 0.73
    assert d["flagged"].tolist() == [False, True] and d["detected"].tolist() == [[True, False], [False, False]]
    model.decision = {"flag_rule": "categories", "category_thresholds": {"violence": 0.1}}
    d = model.decide(out)  # sigmoid(-2) = 0.12 >= 0.1 for violence
    assert d["flagged"].tolist() == [True, True] and d["detected"].tolist() == [[True, True], [False, True]]
    with pytest.raises(ValueError, match="severity"):
        tiny("moderation", categories=CATEGORIES, decision={"flag_rule": "severity", "flag_min_severity": 1})


def test_image_statistics_from_a_preprocessor_config_or_the_model_type(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3],
                                                                  "image_std": [0.4, 0.5, 0.6]}))
    assert image_statistics(str(tmp_path), "clip") == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert image_statistics(str(empty), "siglip") == ([0.5] * 3, [0.5] * 3)
    assert image_statistics(str(empty), "clip") == (list(CLIP_MEAN), list(CLIP_STD))


def test_the_tiny_preset_needs_a_frame_size_its_patches_divide(tiny_tokenizer):
    with pytest.raises(ValueError, match="multiple of 8"):
        build_video_text_model("tiny", tiny_tokenizer, "score", frame_size=36)


def test_a_plain_dual_encoder_directory_gets_new_heads_and_its_image_statistics(tmp_path, tiny_tokenizer):
    """The hub path (``openai/clip-vit-base-patch32`` and the like), offline: a saved plain CLIPModel."""
    plain = tiny().backbone
    plain.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3,
                                                                          "image_std": [0.25] * 3}))
    model = build_video_text_model(str(tmp_path / "clip"), tiny_tokenizer, "score", num_frames=4, frame_size=64)
    assert model.image_mean == [0.5] * 3 and model.image_std == [0.25] * 3
    assert model.frame_size == 64 and model.image_size == 32  # 64x64 frames are resized to the encoder's 32
    for key, value in plain.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    ids, mask = prompts(tiny_tokenizer, ["a cat"])
    with torch.no_grad():
        assert model.eval()(ids, mask, random_frames(1, size=64)).scores.shape == (1,)


def test_a_siglip_dual_encoder_works_the_same_way(tmp_path, tiny_tokenizer):
    """SigLIP: bidirectional text encoder, attention-pooled frames; its text ``head`` and ``logit_bias`` are unused."""
    from transformers import SiglipConfig, SiglipModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    siglip = SiglipModel(SiglipConfig(text_config=dict(vocab_size=len(tiny_tokenizer), max_position_embeddings=64,
                                                       **small),
                                      vision_config=dict(image_size=32, patch_size=8, **small)))
    model = VideoTextModel(siglip, "score", num_frames=4, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ids, mask = prompts(tiny_tokenizer, ["a cat", "a dog on a boat"])
    model(ids, mask, random_frames(4)).scores.sum().backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    assert not any(n.startswith(("backbone.text_model.head.", "backbone.logit_")) for n in trainable)
    model.eval().save_pretrained(tmp_path / "siglip", tokenizer=tiny_tokenizer)
    loaded = VideoTextModel.from_pretrained(tmp_path / "siglip").eval()
    assert loaded.image_mean == [0.5] * 3
    with torch.no_grad():
        assert torch.equal(model(ids, mask, random_frames(4)).scores, loaded(ids, mask, random_frames(4)).scores)
