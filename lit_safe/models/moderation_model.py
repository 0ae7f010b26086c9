"""Moderation models: a transformer backbone, one pooled vector per (prompt, response), and three heads.

Heads: ``category_head`` (multi-label harm categories, sigmoid), ``unsafe_head`` (the overall unsafe flag, sigmoid)
and, where the data has severity, ``severity_head`` (softmax over levels; PKU-SafeRLHF: 0 safe, 1 minor,
2 moderate, 3 severe). Pooling: the last attended token for decoder LMs (the token that has seen everything), the
mean over attended tokens or the first (CLS) token for encoders; ``auto`` picks last for decoders and mean for
encoders (sentence-transformers' MiniLM was trained with mean pooling).

The decision ("flag this response") is a configurable, severity-sensitive rule (:func:`flag_decisions`):

- ``unsafe``: flag when P(unsafe) >= ``flag_threshold``;
- ``severity``: flag when P(severity >= ``flag_min_severity``) >= ``flag_threshold`` (e.g. 2: flag only moderate
  and severe harm);
- ``categories``: flag when any category's probability reaches its own threshold (``category_thresholds``).

Saved in the Hugging Face format: ``config.json`` (the backbone's config plus a ``moderation`` entry with the
categories, severity levels, pooling and the decision rule), safetensors with the backbone under its
``base_model_prefix`` and the heads as ``category_head.*``, ``unsafe_head.*``, ``severity_head.*``, and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_safe.models.backbone import DTYPES, hidden_size, load_backbone_beside_heads
from lit_safe.models.score_model import last_attended_index, read_tensors, save_with_heads

Pooling = Literal["auto", "last", "mean", "cls"]
FlagRule = Literal["unsafe", "severity", "categories"]
HEADS = ("category_head", "unsafe_head", "severity_head")


def is_encoder(config) -> bool:
    """Whether a transformers config is a bidirectional encoder's (BERT, RoBERTa, DeBERTa, ...): its model type has a
    masked-LM head in transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def pool_hidden(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """One vector per sequence from hidden states.

    Args:
        hidden: ``(B, L, H)`` last hidden states.
        attention_mask: ``(B, L)``, 1 for real tokens (left or right padding).
        pooling: ``last`` (last attended token), ``mean`` (mean over attended tokens) or ``cls`` (position 0).

    Returns:
        ``(B, H)``.
    """
    if pooling == "last":
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last_attended_index(attention_mask)]
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if pooling == "cls":
        return hidden[:, 0]
    raise ValueError(f"pooling must be last, mean or cls, got {pooling!r}")


def flag_decisions(
    category_probs: Tensor,
    unsafe_prob: Tensor,
    severity_probs: Tensor | None,
    rule: str,
    flag_threshold: float,
    flag_min_severity: int,
    category_thresholds: Tensor,
) -> tuple[Tensor, Tensor]:
    """The moderation decision per response.

    Args:
        category_probs: ``(B, C)`` sigmoid probabilities.
        unsafe_prob: ``(B,)``.
        severity_probs: ``(B, S)`` softmax probabilities, or ``None``.
        rule: ``unsafe``, ``severity`` or ``categories`` (see the module docstring).
        flag_threshold: probability threshold of the ``unsafe`` and ``severity`` rules.
        flag_min_severity: lowest severity level the ``severity`` rule flags (1..S-1).
        category_thresholds: ``(C,)`` per-category probability thresholds.

    Returns:
        ``(flagged (B,) bool, detected (B, C) bool)``: detected categories are those at or above their threshold.
    """
    detected = category_probs >= category_thresholds.to(category_probs)
    if rule == "unsafe":
        flagged = unsafe_prob >= flag_threshold
    elif rule == "categories":
        flagged = detected.any(dim=-1)
    elif rule == "severity":
        if severity_probs is None:
            raise ValueError("flag_rule 'severity' needs a severity head (data with severity labels)")
        top = severity_probs.size(-1) - 1
        if not 1 <= flag_min_severity <= top:
            raise ValueError(f"flag_min_severity must be in [1, {top}], got {flag_min_severity}")
        flagged = severity_probs[:, flag_min_severity:].sum(-1) >= flag_threshold
    else:
        raise ValueError(f"flag_rule must be unsafe, severity or categories, got {rule!r}")
    return flagged, detected


def validate_decision(decision: dict, categories: list[str], severity_levels: int) -> None:
    """Raise ``ValueError`` for a decision rule that cannot work with these categories and severity levels.

    Args:
        decision: ``flag_rule``, ``flag_threshold``, ``flag_min_severity``, ``category_thresholds`` (``{name: t}``).
        categories: the model's categories.
        severity_levels: the model's severity classes (0: none).
    """
    rule = decision.get("flag_rule")
    if rule not in ("unsafe", "severity", "categories"):
        raise ValueError(f"flag_rule must be unsafe, severity or categories, got {rule!r}")
    if not 0 < float(decision.get("flag_threshold", 0.5)) <= 1:
        raise ValueError(f"flag_threshold must be in (0, 1], got {decision.get('flag_threshold')}")
    if rule == "severity":
        if severity_levels < 2:
            raise ValueError("flag_rule 'severity' needs severity labels (PKU-SafeRLHF has them; BeaverTails does not)")
        level = decision.get("flag_min_severity")
        if not isinstance(level, int) or not 1 <= level <= severity_levels - 1:
            raise ValueError(f"flag_min_severity must be in [1, {severity_levels - 1}], got {level!r}")
    thresholds = decision.get("category_thresholds", {})
    unknown = sorted(set(thresholds) - set(categories))
    if unknown:
        raise ValueError(f"category_thresholds names unknown categories {unknown}; known: {categories}")
    bad = {k: v for k, v in thresholds.items() if not 0 <= float(v) <= 1}
    if bad:
        raise ValueError(f"category thresholds must be in [0, 1], got {bad}")


class ModerationOutput(NamedTuple):
    """Logits of a :class:`ModerationModel` (a named tuple, so that FSDP2 sees the tensors).

    Attributes:
        category_logits: ``(B, C)``.
        unsafe_logits: ``(B,)``.
        severity_logits: ``(B, S)``, or ``None`` without a severity head.
    """

    category_logits: Tensor
    unsafe_logits: Tensor
    severity_logits: Tensor | None


def moderation_decisions(out: ModerationOutput, categories: list[str], decision: dict) -> dict[str, Tensor | None]:
    """Probabilities and the decisions of a rule (:func:`flag_decisions`) for a batch of moderation logits.

    Args:
        out: the logits of ``N`` items (``severity_logits`` ``None`` without a severity head).
        categories: the category names, in logit order.
        decision: the rule: ``flag_rule`` (default ``unsafe``), ``flag_threshold`` (0.5), ``flag_min_severity`` (1)
            and ``category_thresholds`` (``{name: threshold}``; 0.5 for a category it leaves out).

    Returns:
        ``category_probs (N, C)``, ``unsafe_prob (N,)``, ``severity_probs (N, S)`` or ``None``, ``flagged (N,)`` and
        ``detected (N, C)`` (booleans).
    """
    decision = {"flag_rule": "unsafe", "flag_threshold": 0.5, "flag_min_severity": 1, **decision}
    named = decision.get("category_thresholds") or {}
    thresholds = torch.tensor([float(named.get(c, 0.5)) for c in categories])
    category_probs, unsafe_prob = out.category_logits.sigmoid(), out.unsafe_logits.sigmoid()
    severity_probs = out.severity_logits.softmax(-1) if out.severity_logits is not None else None
    flagged, detected = flag_decisions(category_probs, unsafe_prob, severity_probs, decision["flag_rule"],
                                       float(decision["flag_threshold"]), int(decision["flag_min_severity"]),
                                       thresholds)
    return {"category_probs": category_probs, "unsafe_prob": unsafe_prob, "severity_probs": severity_probs,
            "flagged": flagged, "detected": detected}


class ModerationModel(nn.Module):
    """A backbone (``AutoModel``) plus moderation heads on a pooled vector.

    Args:
        backbone: a Hugging Face base model returning ``last_hidden_state`` (decoder or encoder).
        categories: harm category names, in label order.
        severity_levels: number of severity classes (0: no severity head).
        pooling: ``auto``, ``last``, ``mean`` or ``cls``.
        decision: the flagging rule saved with the model: ``flag_rule``, ``flag_threshold``, ``flag_min_severity``
            and ``category_thresholds`` (``{name: threshold}``), see :func:`flag_decisions`.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        categories: list[str],
        severity_levels: int = 0,
        pooling: Pooling = "auto",
        decision: dict | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("auto", "last", "mean", "cls"):
            raise ValueError(f"pooling must be auto, last, mean or cls, got {pooling!r}")
        if not categories:
            raise ValueError("a moderation model needs at least one harm category")
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            # The heads read the last hidden states: an encoder's own pooler (BERT's) would get no gradient, which
            # DDP with find_unused_parameters=False rejects ("Expected to have finished reduction ...").
            backbone.pooler = None
        self.backbone = backbone
        self.categories = list(categories)
        self.severity_levels = severity_levels
        self.pooling = ("mean" if is_encoder(backbone.config) else "last") if pooling == "auto" else pooling
        self.decision = dict(decision or {})
        width = hidden_size(backbone)
        dtype = backbone.get_input_embeddings().weight.dtype
        self.category_head = nn.Linear(width, len(self.categories), dtype=dtype)
        self.unsafe_head = nn.Linear(width, 1, dtype=dtype)
        self.severity_head = nn.Linear(width, severity_levels, dtype=dtype) if severity_levels else None
        for head in (self.category_head, self.unsafe_head, self.severity_head):
            if head is not None:
                nn.init.normal_(head.weight, std=1.0 / (width + 1) ** 0.5)
                nn.init.zeros_(head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ModerationOutput:
        """Logits for a batch: ``input_ids``, ``attention_mask`` ``(B, L)``; float32 outputs."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        pooled = pool_hidden(hidden, attention_mask, self.pooling).to(self.category_head.weight.dtype)
        severity = self.severity_head(pooled).float() if self.severity_head is not None else None
        # clone: a view as output would let an in-place op skip FSDP2's pre-backward hook (FSDP2 warns about it)
        unsafe = self.unsafe_head(pooled).squeeze(-1).float().clone()
        return ModerationOutput(self.category_head(pooled).float(), unsafe, severity)

    def decide(self, out: ModerationOutput) -> dict[str, Tensor | None]:
        """Probabilities and the decision of the model's own rule (``self.decision``, saved with the model):
        :func:`moderation_decisions`."""
        return moderation_decisions(out, self.categories, self.decision)

    # ----------------------------------------------------------------------------------------- Hugging Face format
    def moderation_config(self) -> dict:
        return {"categories": self.categories, "severity_levels": self.severity_levels, "pooling": self.pooling,
                **self.decision}

    def save_pretrained(
        self, path: str | Path, tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, Tensor] | None = None, max_shard_size: str = "5GB",
    ) -> Path:
        """Write config, safetensors weights and (optionally) the tokenizer; ``state_dict``: this module's full state
        dict when the live parameters are sharded."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        return save_with_heads(path, self.backbone, state_dict, HEADS, {"moderation": self.moderation_config()},
                               "ForModeration", tokenizer, max_shard_size)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str = "float32", revision: str | None = None,
                        attn_implementation: str | None = "sdpa") -> ModerationModel:
        """Load a moderation model saved by :meth:`save_pretrained` (local directory or hub id)."""
        config = AutoConfig.from_pretrained(str(path), revision=revision)
        saved = getattr(config, "moderation", None)
        if not saved:
            raise ValueError(f"{path} is not a moderation model: its config.json has no 'moderation' entry")
        backbone = load_backbone_beside_heads(str(path), tuple(f"{h}." for h in HEADS), revision=revision,
                                              dtype=DTYPES[dtype], attn_implementation=attn_implementation)
        decision = {k: v for k, v in saved.items() if k not in ("categories", "severity_levels", "pooling")}
        model = cls(backbone, saved["categories"], saved["severity_levels"], saved["pooling"], decision)
        keys = tuple(f"{h}.{p}" for h in HEADS for p in ("weight", "bias"))
        heads = read_tensors(str(path), keys, revision)
        for name in HEADS:
            head = getattr(model, name)
            if head is None:
                continue
            if f"{name}.weight" not in heads:
                raise ValueError(f"{path}: no '{name}.weight' in the checkpoint")
            head.weight.data.copy_(heads[f"{name}.weight"])
            head.bias.data.copy_(heads[f"{name}.bias"])
        return model


def build_moderation_model(
    backbone: str,
    tokenizer: PreTrainedTokenizerBase,
    categories: list[str],
    severity_levels: int,
    *,
    pooling: Pooling = "auto",
    dtype: str = "float32",
    revision: str | None = None,
    gradient_checkpointing: bool = False,
) -> ModerationModel:
    """A moderation model on ``backbone``: a preset, any HF model (new heads), or a saved moderation model (its heads
    too, which must have the same categories and severity levels).
    """
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.tokenizer import is_preset, resolve_pretrained

    config = None if is_preset(backbone) else AutoConfig.from_pretrained(resolve_pretrained(backbone),
                                                                          revision=revision)
    if config is not None and getattr(config, "moderation", None):
        model = ModerationModel.from_pretrained(backbone, dtype=dtype, revision=revision)
        if model.categories != list(categories) or model.severity_levels != severity_levels:
            raise ValueError(
                f"{backbone} classifies {len(model.categories)} categories with {model.severity_levels} severity "
                f"levels, but the data has {len(categories)} categories and {severity_levels} levels"
            )
        if len(tokenizer) > model.backbone.get_input_embeddings().num_embeddings:
            model.backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    else:
        model = ModerationModel(load_backbone(backbone, tokenizer, dtype=dtype, revision=revision), categories,
                                severity_levels, pooling)
    if gradient_checkpointing:
        model.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


__all__ = ["ModerationModel", "ModerationOutput", "build_moderation_model", "flag_decisions", "is_encoder",
           "moderation_decisions", "pool_hidden", "validate_decision"]
