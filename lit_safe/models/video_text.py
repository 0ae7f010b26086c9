"""Text-video models: a CLIP-style dual encoder, a small fusion transformer, and a score or moderation head.

SafeSora's released preference models (Dai et al., arXiv 2406.14477; methods.md section 3.2) put a linear score head
on Video-LLaVA-7B. lit_safe builds the same kind of model on any Hugging Face dual encoder that has a ``text_model``
and a ``vision_model`` (``CLIPModel`` such as ``openai/clip-vit-base-patch32``, ``SiglipModel``, ...), which trains
on one GPU, and on a tiny random CLIP for CPU tests (preset ``tiny``). A forward pass:

1. the prompt's tokens go through the text encoder: token states ``(N, L, D_t)``;
2. each of the ``F`` frames of each video, normalised with the backbone's image mean and std
   (:func:`lit_safe.models.frames.frames_to_float`) and resized to its ``image_size``, goes through the vision
   encoder: one pooled vector per frame, ``(N, F, D_v)``;
3. both are projected to the fusion width, get a modality embedding (and the frames a learned temporal position
   embedding), and are concatenated after a learned ``[SCORE]`` token; a small ``nn.TransformerEncoder``
   (pre-norm, ``fusion_layers`` layers) fuses them, the prompt's padding masked out;
4. the heads read the ``[SCORE]`` token's final state: ``score`` (one number; ``score_type`` ``reward`` or ``cost``,
   cost > 0 meaning unsafe) or ``moderation`` (``C`` category logits and one unsafe logit, decided by
   :func:`lit_safe.models.moderation_model.flag_decisions`).

The contrastive parts of the backbone that this model does not use (``visual_projection``, ``text_projection``,
``logit_scale``, SigLIP's ``logit_bias`` and text ``head``) are frozen, so that DDP finds no parameter without a
gradient (CLIP's 0-d ``logit_scale`` becomes a buffer of the same name: FSDP2 refuses scalar parameters); they are
still saved. ``freeze_backbone`` freezes the whole dual encoder (and runs it without autograd):
only the fusion transformer and the heads train, which fits big backbones on small GPUs.

Departures from SafeSora: no Video-LLaVA (a 7B LM is out of reach here); the score is read at a fusion token, not at
the LM's last token; prompts longer than the text encoder's ``max_position_embeddings`` (77 for CLIP) are cut.

Saved in the Hugging Face format: ``config.json`` (the backbone's config plus a ``lit_safe_video`` entry: head,
score type, categories and decision rule, ``num_frames``, ``frame_size``, ``image_mean``/``image_std``, the fusion
settings, and ``cost_sign: "positive means unsafe"`` for a cost model), ``model.safetensors`` with the backbone under
its ``base_model_prefix`` (so ``AutoModel.from_pretrained`` reads the fine-tuned dual encoder alone) and the fusion
and heads as ``fusion.*``, ``score_head.*``, ``category_head.*``, ``unsafe_head.*``, and the tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, CLIPConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_safe.models.backbone import DTYPES, load_backbone_beside_heads
from lit_safe.models.frames import frames_to_float, resize_frames
from lit_safe.models.moderation_model import ModerationOutput, moderation_decisions, validate_decision
from lit_safe.models.score_model import read_tensors, save_with_heads

Head = Literal["score", "moderation"]
VideoScoreType = Literal["reward", "cost"]
CONFIG_KEY = "lit_safe_video"
COST_SIGN = "positive means unsafe"
HEAD_PREFIXES = ("fusion.", "score_head.", "category_head.", "unsafe_head.")
# CLIP's image normalisation (openai/clip-vit-* preprocessor_config.json); SigLIP uses 0.5 / 0.5.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Tiny random dual encoders for CPU runs (the vocabulary comes from the tokenizer, the image size from the data).
VIDEO_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=8),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, patch_size=8),
}


class VideoScoreOutput(NamedTuple):
    """What a score-head :class:`VideoTextModel` returns (a named tuple, so that FSDP2 sees the tensor).

    Attributes:
        scores: ``(N,)`` float32, one score per (prompt, video).
    """

    scores: Tensor


def preset_clip_config(name: str, tokenizer: PreTrainedTokenizerBase, image_size: int) -> CLIPConfig:
    """The ``CLIPConfig`` of a video preset: text vocabulary and special ids from ``tokenizer``, 77 text positions,
    vision ``image_size`` (the data's ``frame_size``; a multiple of the preset's patch size, 8)."""
    if name not in VIDEO_PRESETS:
        raise ValueError(f"unknown video backbone preset {name!r}; presets: {sorted(VIDEO_PRESETS)}")
    preset = dict(VIDEO_PRESETS[name])
    patch = preset.pop("patch_size")
    if image_size % patch:
        raise ValueError(f"the {name} preset's image size (the data's frame_size) must be a multiple of {patch}, "
                         f"got {image_size}")
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **preset)
    vision = dict(image_size=image_size, patch_size=patch, **preset)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=preset["hidden_size"])


def image_statistics(name_or_path: str, model_type: str | None, revision: str | None = None
                     ) -> tuple[list[float], list[float]]:
    """The image mean and std a pretrained backbone was trained with: its ``preprocessor_config.json`` (local
    directory, hub cache or hub), else the defaults of its model type (CLIP's when unknown)."""
    local = Path(name_or_path) / "preprocessor_config.json"
    found: Path | None = local if local.is_file() else None
    if found is None and not Path(name_or_path).exists():
        try:
            from huggingface_hub import hf_hub_download

            found = Path(hf_hub_download(name_or_path, "preprocessor_config.json", revision=revision))
        except Exception:  # offline without a cached copy, or a repository without one: use the defaults below
            found = None
    if found is not None:
        processor = json.loads(found.read_text())
        if "image_mean" in processor and "image_std" in processor:
            return [float(x) for x in processor["image_mean"]], [float(x) for x in processor["image_std"]]
    mean, std = DEFAULT_STATISTICS.get(model_type or "", (CLIP_MEAN, CLIP_STD))
    return list(mean), list(std)


class VideoTextFusion(nn.Module):
    """Fuse prompt token states and per-frame vectors through a ``[SCORE]`` token.

    Args:
        text_width: ``D_t``, the text encoder's hidden size.
        frame_width: ``D_v``, the width of a frame's pooled vision vector.
        width: fusion width ``d``.
        layers: transformer encoder layers.
        heads: attention heads (``d`` must be divisible by it).
        max_frames: frames per video the temporal position embedding covers.
        dropout: dropout inside the fusion layers.
    """

    SCORE, TEXT, FRAME = 0, 1, 2

    def __init__(self, text_width: int, frame_width: int, width: int, layers: int, heads: int, max_frames: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the fusion width ({width}) must be divisible by fusion_heads ({heads})")
        self.text_proj = nn.Linear(text_width, width)
        self.frame_proj = nn.Linear(frame_width, width)
        self.score_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.frame_position = nn.Embedding(max_frames, width)
        self.modality = nn.Embedding(3, width)
        for embedding in (self.frame_position, self.modality):
            nn.init.normal_(embedding.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, text_states: Tensor, text_mask: Tensor, frame_states: Tensor) -> Tensor:
        """The ``[SCORE]`` token's fused state.

        Args:
            text_states: ``(N, L, D_t)``.
            text_mask: ``(N, L)``, 1 for real tokens.
            frame_states: ``(N, F, D_v)`` with ``F <= max_frames``.

        Returns:
            ``(N, d)``.
        """
        n, frames = frame_states.shape[:2]
        if frames > self.frame_position.num_embeddings:
            raise ValueError(f"{frames} frames per video, but the model has temporal positions for "
                             f"{self.frame_position.num_embeddings} (num_frames)")
        dtype = self.text_proj.weight.dtype
        text = self.text_proj(text_states.to(dtype)) + self.modality.weight[self.TEXT]
        positions = torch.arange(frames, device=frame_states.device)
        video = self.frame_proj(frame_states.to(dtype)) + self.frame_position(positions) + self.modality.weight[
            self.FRAME]
        score = (self.score_token + self.modality.weight[self.SCORE]).expand(n, -1, -1)
        tokens = torch.cat([score, text, video], dim=1)
        keep = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=tokens.device), text_mask.bool(),
                          torch.ones(n, frames, dtype=torch.bool, device=tokens.device)], dim=1)
        fused = self.encoder(tokens, src_key_padding_mask=~keep)
        return self.norm(fused[:, 0])


class VideoTextModel(nn.Module):
    """A dual-encoder backbone, a fusion transformer and a score or moderation head on (prompt, video) pairs.

    Args:
        backbone: a Hugging Face dual encoder with ``text_model`` and ``vision_model`` (``CLIPModel``,
            ``SiglipModel``, ...).
        head: ``score`` (reward or cost) or ``moderation`` (categories + unsafe flag).
        score_type: ``reward`` or ``cost`` (score head; saved, and a cost model's config states its sign convention).
        categories: harm category names (moderation head).
        decision: the moderation rule saved with the model: ``flag_rule`` (``unsafe`` or ``categories``),
            ``flag_threshold``, ``category_thresholds`` (``{name: threshold}``); see :meth:`decide`.
        num_frames: frames per video the temporal embedding covers (videos may have fewer).
        frame_size: the frame size of the training data (recorded; frames are resized to the vision model's
            ``image_size`` either way).
        image_mean, image_std: the backbone's image normalisation (default: CLIP's).
        fusion_width: width of the fusion transformer (default: the text encoder's hidden size).
        fusion_layers: fusion transformer layers.
        fusion_heads: its attention heads.
        fusion_dropout: its dropout.
        freeze_backbone: train only the fusion transformer and the heads.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        head: Head = "score",
        *,
        score_type: VideoScoreType = "reward",
        categories: Sequence[str] | None = None,
        decision: dict | None = None,
        num_frames: int = 8,
        frame_size: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        fusion_width: int | None = None,
        fusion_layers: int = 2,
        fusion_heads: int = 4,
        fusion_dropout: float = 0.0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        if head not in ("score", "moderation"):
            raise ValueError(f"head must be score or moderation, got {head!r}")
        if head == "score" and score_type not in ("reward", "cost"):
            raise ValueError(f"score_type must be reward or cost, got {score_type!r}")
        if head == "moderation" and not categories:
            raise ValueError("a moderation head needs at least one harm category")
        if not (hasattr(backbone, "text_model") and hasattr(backbone, "vision_model")):
            raise ValueError(f"{type(backbone).__name__} is not a dual encoder: it needs text_model and vision_model "
                             "(CLIPModel, SiglipModel, ...)")
        self.backbone = backbone
        self.head = head
        self.score_type = score_type
        self.categories = list(categories or [])
        self.decision = dict(decision or {})
        if head == "moderation":
            validate_decision({"flag_rule": "unsafe", **self.decision}, self.categories, 0)
        self.num_frames = int(num_frames)
        config = backbone.config
        self.image_size = int(config.vision_config.image_size)
        self.frame_size = int(frame_size) if frame_size is not None else self.image_size
        self.image_mean, self.image_std = [float(x) for x in image_mean], [float(x) for x in image_std]
        self.max_text_length = int(config.text_config.max_position_embeddings)
        text_width = int(config.text_config.hidden_size)
        self.fusion_width = int(fusion_width or text_width)
        self.fusion_layers, self.fusion_heads, self.fusion_dropout = fusion_layers, fusion_heads, fusion_dropout
        dtype = next(backbone.parameters()).dtype
        frame_width = int(config.vision_config.hidden_size)  # CLIP's pooled CLS, SigLIP's attention-pooled head
        self.fusion = VideoTextFusion(text_width, frame_width, self.fusion_width, fusion_layers, fusion_heads,
                                      self.num_frames, fusion_dropout).to(dtype)
        width = self.fusion_width
        if head == "score":
            self.score_head = nn.Linear(width, 1, dtype=dtype)
            heads = [self.score_head]
        else:
            self.category_head = nn.Linear(width, len(self.categories), dtype=dtype)
            self.unsafe_head = nn.Linear(width, 1, dtype=dtype)
            heads = [self.category_head, self.unsafe_head]
        for linear in heads:
            nn.init.normal_(linear.weight, std=1.0 / math.sqrt(width + 1))
            nn.init.zeros_(linear.bias)
        for name, param in list(backbone.named_parameters()):
            if name.startswith(("text_model.", "vision_model.")) and not name.startswith("text_model.head."):
                continue
            # contrastive parts, unused here (see the module docstring): frozen; a 0-d one (CLIP's logit_scale)
            # becomes a buffer of the same name, which FSDP2 accepts (it refuses scalar parameters) and saves alike
            param.requires_grad_(False)
            if param.dim() == 0:
                owner_name, _, attr = name.rpartition(".")
                owner = backbone.get_submodule(owner_name) if owner_name else backbone
                delattr(owner, attr)
                owner.register_buffer(attr, param.detach())
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)

    # ---------------------------------------------------------------------------------------------- encoders
    def pixel_values(self, frames: Tensor) -> Tensor:
        """``uint8 (N, F, 3, H, W)`` frames -> normalised ``(N * F, 3, S, S)`` in the backbone's dtype, ``S`` its
        ``image_size``: ``(frames / 255 - mean) / std`` per channel, then a bilinear resize if ``H, W != S``."""
        if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (N, F, 3, H, W), got {frames.dtype} {tuple(frames.shape)}")
        pixels = frames_to_float(frames, self.image_mean, self.image_std).flatten(0, 1)
        pixels = resize_frames(pixels, self.image_size)
        return pixels.to(next(self.backbone.vision_model.parameters()).dtype)

    def encode_frames(self, frames: Tensor) -> Tensor:
        """One pooled vision vector per frame: ``uint8 (N, F, 3, H, W)`` -> ``(N, F, D_v)``."""
        n, f = frames.shape[:2]
        out = self.backbone.vision_model(pixel_values=self.pixel_values(frames))
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state.mean(1)
        return pooled.reshape(n, f, -1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Token states ``(B, L', D_t)`` and the mask ``(B, L')``, ``L' = min(L, max_position_embeddings)``."""
        input_ids, attention_mask = input_ids[:, : self.max_text_length], attention_mask[:, : self.max_text_length]
        states = self.backbone.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states, attention_mask

    def fused(self, input_ids: Tensor, attention_mask: Tensor, frames: Tensor) -> Tensor:
        """The ``[SCORE]`` token's fused state ``(N, d)`` of every (prompt, video).

        ``frames`` may hold ``k`` videos per prompt (``N = k B``), in the layout of the pair views: the ``B`` first
        videos, then the ``B`` second ones; each prompt is encoded once and shared by its videos.
        """
        batch, videos = input_ids.size(0), frames.size(0)
        if videos % batch:
            raise ValueError(f"{videos} videos for {batch} prompts: need a whole number of videos per prompt")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            text, mask = self.encode_text(input_ids, attention_mask)
            video = self.encode_frames(frames)
        repeats = videos // batch
        if repeats > 1:
            text, mask = text.repeat(repeats, 1, 1), mask.repeat(repeats, 1)
        return self.fusion(text, mask, video)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, frames: Tensor
                ) -> VideoScoreOutput | ModerationOutput:
        """Score or classify a batch.

        Args:
            input_ids: ``(B, L)`` prompt token ids, right padded.
            attention_mask: ``(B, L)``, 1 for real tokens.
            frames: ``uint8 (N, F, 3, H, W)``, ``N`` a multiple of ``B`` (see :meth:`fused`).

        Returns:
            :class:`VideoScoreOutput` (``scores (N,)``) for the score head; for the moderation head a
            :class:`~lit_safe.models.moderation.ModerationOutput` with ``category_logits (N, C)``,
            ``unsafe_logits (N,)`` and no severity. Float32.
        """
        pooled = self.fused(input_ids, attention_mask, frames)
        if self.head == "score":
            # clone: a view as output would let an in-place op skip FSDP2's pre-backward hook
            return VideoScoreOutput(self.score_head(pooled).squeeze(-1).float().clone())
        unsafe = self.unsafe_head(pooled).squeeze(-1).float().clone()
        return ModerationOutput(self.category_head(pooled).float(), unsafe, None)

    def decide(self, out: ModerationOutput) -> dict[str, Tensor | None]:
        """Probabilities and the decision of the model's rule (``self.decision``; default: flag at P(unsafe) >= 0.5,
        categories detected at 0.5): :func:`~lit_safe.models.moderation_model.moderation_decisions`, with
        ``severity_probs`` ``None``."""
        return moderation_decisions(out, self.categories, self.decision)

    # ----------------------------------------------------------------------------------------- Hugging Face format
    def video_config(self) -> dict:
        """The ``lit_safe_video`` entry of ``config.json``."""
        entry = {
            "head": self.head,
            "num_frames": self.num_frames,
            "frame_size": self.frame_size,
            "image_size": self.image_size,
            "image_mean": self.image_mean,
            "image_std": self.image_std,
            "fusion_width": self.fusion_width,
            "fusion_layers": self.fusion_layers,
            "fusion_heads": self.fusion_heads,
            "fusion_dropout": self.fusion_dropout,
        }
        if self.head == "score":
            entry["score_type"] = self.score_type
            if self.score_type == "cost":
                entry["cost_sign"] = COST_SIGN
        else:
            entry["categories"] = self.categories
            entry["decision"] = self.decision
        return entry

    def save_pretrained(
        self, path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, Tensor] | None = None, max_shard_size: str = "5GB",
    ) -> Path:
        """Write config, safetensors weights and (optionally) the tokenizer to ``path``; ``state_dict``: this
        module's full state dict when the live parameters are sharded (FSDP)."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        suffix = "ForVideoScore" if self.head == "score" else "ForVideoModeration"
        return save_with_heads(path, self.backbone, state_dict, HEAD_PREFIXES, {CONFIG_KEY: self.video_config()},
                               suffix, tokenizer, max_shard_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str = "float32", revision: str | None = None,
                        freeze_backbone: bool = False, attn_implementation: str | None = "sdpa") -> VideoTextModel:
        """Load a model written by :meth:`save_pretrained` (local directory or hub id), exactly."""
        config = AutoConfig.from_pretrained(str(path), revision=revision)
        saved = getattr(config, CONFIG_KEY, None)
        if not saved:
            raise ValueError(f"{path} is not a lit_safe video model: its config.json has no '{CONFIG_KEY}' entry")
        backbone = load_backbone_beside_heads(str(path), HEAD_PREFIXES, revision=revision, dtype=DTYPES[dtype],
                                              attn_implementation=attn_implementation)
        model = cls(
            backbone, saved["head"], score_type=saved.get("score_type", "reward"), categories=saved.get("categories"),
            decision=saved.get("decision"), num_frames=saved["num_frames"], frame_size=saved["frame_size"],
            image_mean=saved["image_mean"], image_std=saved["image_std"], fusion_width=saved["fusion_width"],
            fusion_layers=saved["fusion_layers"], fusion_heads=saved["fusion_heads"],
            fusion_dropout=saved["fusion_dropout"], freeze_backbone=freeze_backbone,
        )
        keys = tuple(k for k in model.state_dict() if k.startswith(HEAD_PREFIXES))
        tensors = read_tensors(str(path), keys, revision)
        missing = sorted(set(keys) - set(tensors))
        if missing:
            raise ValueError(f"{path}: the checkpoint lacks {len(missing)} fusion/head tensors, e.g. {missing[:3]}")
        model.load_state_dict(tensors, strict=False)
        return model


def is_video_model(name_or_path: str, revision: str | None = None) -> bool:
    """Whether ``name_or_path`` (not a preset) is a saved :class:`VideoTextModel`."""
    config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    return bool(getattr(config, CONFIG_KEY, None))


def build_video_text_model(
    backbone: str,
    tokenizer: PreTrainedTokenizerBase,
    head: Head,
    *,
    score_type: VideoScoreType = "reward",
    categories: Sequence[str] | None = None,
    decision: dict | None = None,
    num_frames: int = 8,
    frame_size: int | None = None,
    freeze_backbone: bool = False,
    dtype: str = "float32",
    revision: str | None = None,
    gradient_checkpointing: bool = False,
    **fusion,
) -> VideoTextModel:
    """A video-text model on ``backbone``.

    Args:
        backbone: a preset (``tiny``, ``small``: random CLIPs sized for CPUs, vision ``image_size = frame_size``),
            a hub id or directory of a dual encoder (new fusion and heads; image statistics from its
            ``preprocessor_config.json``), or a saved :class:`VideoTextModel` (its fusion and heads too: its head kind,
            score type and categories must match, and its ``num_frames`` cover the data's; its fusion settings win).
        tokenizer: the matching tokenizer (text embeddings are resized if it added tokens).
        head: ``score`` or ``moderation``.
        score_type, categories, decision, num_frames, frame_size, freeze_backbone: see :class:`VideoTextModel`
            (``frame_size`` defaults to 32 for a preset).
        dtype: parameter dtype.
        revision: hub revision to pin.
        gradient_checkpointing: recompute the dual encoder's activations in backward.
        fusion: ``fusion_width``, ``fusion_layers``, ``fusion_heads``, ``fusion_dropout`` of a new fusion transformer
            (see :class:`VideoTextModel`; a saved video model keeps its own).
    """
    from lit_safe.models.tokenizer import is_preset, resolve_pretrained

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    settings = dict(num_frames=num_frames, freeze_backbone=freeze_backbone, **fusion)
    if is_preset(backbone):
        size = frame_size or 32
        config = preset_clip_config(backbone, tokenizer, size)
        dual = AutoModel.from_config(config, dtype=DTYPES[dtype], attn_implementation="sdpa")
        model = VideoTextModel(dual, head, score_type=score_type, categories=categories, decision=decision,
                               frame_size=size, **settings)
    elif is_video_model(resolve_pretrained(backbone), revision):
        model = VideoTextModel.from_pretrained(resolve_pretrained(backbone), dtype=dtype, revision=revision,
                                               freeze_backbone=freeze_backbone)
        want = (head, score_type if head == "score" else None, list(categories or []) if head == "moderation" else [])
        have = (model.head, model.score_type if model.head == "score" else None, model.categories)
        if want != have:
            raise ValueError(f"{backbone} is a video model with (head, score_type, categories) {have}, but this run "
                             f"needs {want}")
        if num_frames > model.num_frames:
            raise ValueError(f"{backbone} has temporal positions for {model.num_frames} frames, the data has "
                             f"{num_frames}")
        if decision is not None:
            model.decision = dict(decision)
    else:
        location = resolve_pretrained(backbone)
        dual = AutoModel.from_pretrained(location, revision=revision, dtype=DTYPES[dtype], attn_implementation="sdpa")
        mean, std = image_statistics(location, getattr(dual.config, "model_type", None), revision)
        model = VideoTextModel(dual, head, score_type=score_type, categories=categories, decision=decision,
                               frame_size=frame_size, image_mean=mean, image_std=std, **settings)
    text_model = model.backbone.text_model
    if len(tokenizer) > text_model.get_input_embeddings().num_embeddings:
        text_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.backbone.config.text_config.vocab_size = len(tokenizer)
    if gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def video_pair_scores(model: VideoTextModel, batch: dict) -> tuple[Tensor, Tensor, VideoScoreOutput]:
    """Scores of both videos of every pair of a ``preference`` or ``safety`` batch.

    Args:
        model: a score-head :class:`VideoTextModel`.
        batch: ``input_ids``/``attention_mask`` ``(B, L)`` and ``frames`` ``uint8 (2B, F, 3, H, W)`` (the B first
            videos, then the B second ones).

    Returns:
        ``(first (B,), second (B,), the model output)``.
    """
    out = model(batch["input_ids"], batch["attention_mask"], batch["frames"])
    first, second = out.scores.chunk(2)
    return first, second, out


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "COST_SIGN",
    "VIDEO_PRESETS",
    "VideoScoreOutput",
    "VideoTextFusion",
    "VideoTextModel",
    "build_video_text_model",
    "image_statistics",
    "is_video_model",
    "preset_clip_config",
    "video_pair_scores",
]
