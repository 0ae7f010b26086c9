"""Score models: a transformer backbone with a linear head on every token (reward, cost and critic models).

Follows Safe RLHF (Dai et al., arXiv 2310.12773) and its reference implementation: ``Linear(hidden, 1)`` with the
bias initialised to 0 on the last hidden state of every token, the sequence's score read at its last attended
token (the EOS under right padding), and an optional running normaliser of end scores (``reward``: affine
``(s - mu) / sigma``; ``cost``: scale only ``s / sigma``, so the sign that means safe/unsafe survives; ``critic``:
none). Departures: for lit_safe's own head the end index comes from the attention mask only (never ``ids != pad``,
which breaks for tokenizers whose pad token is their EOS), and the normaliser is updated by the caller with gathered
scores.

A trained score model saves in the Hugging Face format: ``config.json`` (the backbone's config plus
``score_type``, ``score_dim``, ``do_normalize``, ``normalizer_type``, ``momentum``, ``mean``, ``var``, ``count``,
``text_encoding`` and, for a cost model, ``cost_sign``), safetensors weights with the backbone under its
``base_model_prefix`` and the head as ``score_head.*`` (the layout of the reference's released
``beaver-7b-*-reward``/``-cost`` models, which this loader also reads), and the tokenizer.

It also loads an ordinary Hugging Face reward model, a ``*ForSequenceClassification`` checkpoint with
``num_labels == 1`` (most open reward models), keeping its trained head, and saves it back in the same layout
(:class:`SequenceClassificationLayout`), so ``AutoModelForSequenceClassification`` still reads the export. Its end
scores are that model's own logits: a decoder's ``score`` Linear (no bias) read at the last attended token that is
not the pad token (the rule of transformers' ``*ForSequenceClassification``); an encoder's ``classifier`` on its
pooler's output at the first token ([CLS]). Per-token scores ``(B, L)`` stay defined for critics: the same head
(for an encoder: pooler, dropout, classifier) applied to every position. Such a model reads text encoded by its own
tokenizer's rules (``text_encoding: tokenizer``; BERT: ``[CLS] ... [SEP]``, Llama: BOS, no EOS appended), where a
lit_safe-trained one reads text with EOS appended after truncation (``append_eos``, :func:`encode_score_texts`).

Sign convention: lit_safe's cost models say ``cost_sign: "positive means unsafe"``. A checkpoint whose score means
the opposite (a harmlessness reward model: higher is safer) is loaded with ``cost_sign="positive means safe"``
(or says so in its ``config.json``): the model then returns the negated scores, so that every caller sees
positive = unsafe, and its export keeps the head as it is with the same ``cost_sign`` written in the config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from lit_safe.models.backbone import DTYPES, hidden_size, is_encoder, load_backbone_beside_heads
from lit_safe.models.text import Text, conversations, encode_conversations, encode_with_eos, is_chat, pad_right

ScoreType = Literal["reward", "cost", "critic"]
TextEncoding = Literal["append_eos", "tokenizer"]
TEXT_ENCODINGS = ("append_eos", "tokenizer")
COST_SIGN = "positive means unsafe"  # lit_safe's convention: a cost above 0 means unsafe
OPPOSITE_SIGN = "positive means safe"  # a harmlessness reward model (higher is safer), negated when loaded
COST_SIGNS = (COST_SIGN, OPPOSITE_SIGN)
SCORE_CONFIG_KEYS = ("score_type", "score_dim", "do_normalize", "normalizer_type", "momentum", "mean", "var", "count",
                     "text_encoding", "cost_sign")
SEQUENCE_CLASSIFICATION = "ForSequenceClassification"
CheckpointLayout = Literal["score_head", "sequence_classification"]


def _attended_positions(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(mask (B, L) bool, positions (B, L))`` of a padded batch, refusing a row without an attended token."""
    mask = attention_mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("a sequence has no attended token (an all-zero attention-mask row)")
    return mask, torch.arange(mask.size(-1), device=mask.device).expand_as(mask)


def last_attended_index(attention_mask: Tensor) -> Tensor:
    """Index of the last attended token of each sequence, under left or right padding.

    Args:
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(B,)`` long tensor. A row with no attended token is an error.
    """
    mask, positions = _attended_positions(attention_mask)
    return torch.where(mask, positions, -1).max(dim=-1).values


def first_attended_index(attention_mask: Tensor) -> Tensor:
    """Index of the first attended token of each sequence (an encoder's [CLS]: 0 under right padding).

    Args:
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(B,)`` long tensor. A row with no attended token is an error.
    """
    mask, positions = _attended_positions(attention_mask)
    return torch.where(mask, positions, mask.size(-1)).min(dim=-1).values


def last_non_pad_index(input_ids: Tensor, attention_mask: Tensor, pad_token_id: int | None) -> Tensor:
    """Where transformers' decoder ``*ForSequenceClassification`` reads its logit: the last attended token whose id is
    not ``pad_token_id`` (the same token as transformers' "rightmost non-pad token" under right or left padding; it
    differs from :func:`last_attended_index` only when a sequence ends in tokens equal to the pad token, e.g. an
    EOS that is also the pad token).

    Args:
        input_ids: ``(B, L)`` token ids.
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.
        pad_token_id: the model config's pad token; ``None``: the last attended token.

    Returns:
        ``(B,)`` long tensor. A row whose attended tokens are all the pad token falls back to its last attended
        token (transformers would read position 0).
    """
    mask = attention_mask.bool()
    if pad_token_id is not None:
        real = mask & (input_ids != pad_token_id)
        mask = torch.where(real.any(dim=-1, keepdim=True), real, mask)
    return last_attended_index(mask)


@dataclass(frozen=True)
class SequenceClassificationLayout:
    """Where a Hugging Face ``*ForSequenceClassification`` checkpoint keeps the parts of a score model, so that one
    loaded from it saves the same layout back.

    Attributes:
        architecture: the class name in ``config.architectures`` (``LlamaForSequenceClassification``).
        head: checkpoint name of the final ``Linear(hidden, 1)``: ``score`` (decoders), ``classifier`` (encoders).
        pooler: checkpoint name of an encoder's pooler (``bert.pooler``, ``pooler``); ``None`` for decoders.
        reads: ``last`` (decoders: :func:`last_non_pad_index`) or ``first`` (encoders: :func:`first_attended_index`).
    """

    architecture: str
    head: str
    pooler: str | None
    reads: Literal["last", "first"]


def sequence_classification_layout(model: PreTrainedModel) -> SequenceClassificationLayout:
    """The layout of a loaded ``*ForSequenceClassification`` model, checked to be one a score model reproduces.

    Supported: a decoder's ``score`` Linear on the base model (transformers' generic head: Llama, Qwen, Mistral,
    Gemma, GPT-2 ...), and an encoder's pooler (on the base model, BERT; or beside it, DeBERTa-v2) followed by
    dropout and a ``classifier`` Linear. Any other module with parameters beside the base model (RoBERTa's
    two-layer head, DistilBERT's ``pre_classifier`` ...) is refused rather than dropped.

    Raises:
        ValueError: ``num_labels != 1``, or an unsupported head.
    """
    architecture = type(model).__name__
    if model.config.num_labels != 1:
        raise ValueError(f"{architecture} has num_labels={model.config.num_labels}; a score model needs a single "
                         f"output (num_labels=1)")
    prefix = model.base_model_prefix
    extra = sorted(name for name, child in model.named_children()
                   if name != prefix and any(True for _ in child.parameters()))
    base = getattr(model, prefix)
    if extra == ["score"] and isinstance(model.score, nn.Linear):
        return SequenceClassificationLayout(architecture, "score", None, "last")
    if extra == ["classifier"] and isinstance(model.classifier, nn.Linear) and isinstance(
            getattr(base, "pooler", None), nn.Module):
        return SequenceClassificationLayout(architecture, "classifier", f"{prefix}.pooler", "first")
    if extra == ["classifier", "pooler"] and isinstance(model.classifier, nn.Linear):
        return SequenceClassificationLayout(architecture, "classifier", "pooler", "first")
    raise ValueError(f"{architecture}: unsupported sequence-classification head (modules {extra} beside the base model "
                     f"{prefix!r}); supported: a decoder's 'score' Linear (Llama, Qwen, Mistral, Gemma, GPT-2 ...) or "
                     f"an encoder's pooler and 'classifier' Linear (BERT, DeBERTa-v2 ...)")


class ScoreOutput(NamedTuple):
    """What a :class:`ScoreModel` returns (a named tuple, so that FSDP2 finds the tensors in it and hooks its
    backward pass; a dataclass is opaque to torch's pytree and left the root's parameters resharded in backward).

    Attributes:
        scores: ``(B, L)`` float32, one score per token.
        end_scores: ``(B,)`` float32, the score at each sequence's last attended token.
        end_index: ``(B,)`` long, that token's position.
        raw_end_scores: ``end_scores`` before normalisation (what the running statistics are made of).
    """

    scores: Tensor
    end_scores: Tensor
    end_index: Tensor
    raw_end_scores: Tensor


class ScoreNormalizer(nn.Module):
    """Running statistics of end scores, and the normalisation the score type calls for.

    Args:
        score_type: ``reward`` (affine), ``cost`` (scale only, keeps the sign) or ``critic`` (identity).
        momentum: ``None`` for exact running mean/variance over everything seen, or an exponential moving
            average with this momentum (the reference scripts use 0.9).
    """

    def __init__(self, score_type: ScoreType = "reward", momentum: float | None = None) -> None:
        super().__init__()
        self.score_type = score_type
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        # Keep the statistics in float64 when the model is cast (``model.to(torch.bfloat16)``, which Lightning's
        # ``bf16-true`` precision does): in bfloat16 the count stops growing at 256 and the mean drifts. Device
        # moves still apply.
        stats = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in stats.items():
            new = self._buffers.get(name)
            if old is not None and new is not None and new.dtype != torch.float64:
                self._buffers[name] = old.to(device=new.device)
        return self

    @torch.no_grad()
    def update(self, scores: Tensor) -> None:
        """Fold a batch of end scores ``(N,)`` (already gathered across ranks) into the statistics."""
        x = scores.detach().double().flatten()
        if x.numel() == 0:
            return
        batch_mean, batch_var, n = x.mean(), x.var(unbiased=False), float(x.numel())
        if self.momentum is None or self.count == 0:
            total = self.count + n
            delta = batch_mean - self.mean
            new_mean = self.mean + delta * n / total
            m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
            self.mean.copy_(new_mean)
            self.var.copy_(m2 / total)
            self.count.copy_(total)
        else:
            self.mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
            self.var.mul_(self.momentum).add_((1 - self.momentum) * batch_var)
            self.count.add_(n)

    def forward(self, scores: Tensor) -> Tensor:
        """Normalise scores of any shape with the current statistics."""
        std = torch.sqrt(self.var.float() + 1e-8).to(scores.dtype)
        if self.score_type == "reward":
            return (scores - self.mean.to(scores.dtype)) / std
        if self.score_type == "cost":
            return scores / std
        return scores


class ScoreModel(nn.Module):
    """A backbone plus ``Linear(hidden, 1)`` on every token.

    Built here, the head is lit_safe's (``score_head``, with bias, on the last hidden state) and the end score is read
    at the last attended token. Loaded from a Hugging Face ``*ForSequenceClassification`` checkpoint
    (:meth:`from_pretrained`, :meth:`from_sequence_classification`), it keeps that model's head and reading rule
    (``layout``, see the module docstring).

    Args:
        backbone: a Hugging Face base model (``AutoModel``) returning ``last_hidden_state``.
        score_type: ``reward``, ``cost`` or ``critic``: selects the normalisation and is saved in the config.
        do_normalize: apply the running normaliser to the returned scores (the statistics are kept either way).
        normalizer_momentum: see :class:`ScoreNormalizer`.
        text_encoding: how :func:`score_texts` encodes text for this model: ``append_eos`` (the tokenizer's special
            tokens, cut, then EOS appended; how lit_safe trains) or ``tokenizer`` (the tokenizer's own encoding).
        cost_sign: what a positive raw score of the head means: ``positive means unsafe`` (lit_safe's convention,
            scores returned as they are) or ``positive means safe`` (scores returned negated, so that positive
            means unsafe to every caller); saved in the config for a cost model or a negated one.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        score_type: ScoreType = "reward",
        do_normalize: bool = False,
        normalizer_momentum: float | None = None,
        text_encoding: TextEncoding = "append_eos",
        cost_sign: str = COST_SIGN,
    ) -> None:
        super().__init__()
        if score_type not in ("reward", "cost", "critic"):
            raise ValueError(f"score_type must be reward, cost or critic, got {score_type!r}")
        if text_encoding not in TEXT_ENCODINGS:
            raise ValueError(f"text_encoding must be one of {TEXT_ENCODINGS}, got {text_encoding!r}")
        if cost_sign not in COST_SIGNS:
            raise ValueError(f"cost_sign must be {COST_SIGN!r} or {OPPOSITE_SIGN!r}, got {cost_sign!r}")
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            # Scores come from the last hidden states: an encoder's own pooler (BERT's) would get no gradient, which
            # DDP with find_unused_parameters=False rejects ("Expected to have finished reduction ..."). A
            # sequence-classification layout takes the pooler into the head instead (from_sequence_classification).
            backbone.pooler = None
        self.backbone = backbone
        self.score_type = score_type
        self.do_normalize = do_normalize
        self.text_encoding = text_encoding
        self.cost_sign = cost_sign
        self.layout: SequenceClassificationLayout | None = None
        width = hidden_size(backbone)
        dtype = backbone.get_input_embeddings().weight.dtype
        self.score_head = nn.Linear(width, 1, bias=True, dtype=dtype)
        nn.init.normal_(self.score_head.weight, std=1.0 / math.sqrt(width + 1))
        nn.init.zeros_(self.score_head.bias)
        self.register_module("pooler", None)
        self.head_dropout: nn.Module = nn.Identity()
        self.normalizer = ScoreNormalizer(score_type, normalizer_momentum)

    @classmethod
    def from_sequence_classification(
        cls,
        model: PreTrainedModel,
        *,
        score_type: ScoreType = "reward",
        do_normalize: bool = False,
        normalizer_momentum: float | None = None,
        text_encoding: TextEncoding = "tokenizer",
        cost_sign: str = COST_SIGN,
    ) -> ScoreModel:
        """A score model made of a loaded Hugging Face ``*ForSequenceClassification`` model's own modules (shared,
        not copied): its base model, and its head (and an encoder's pooler and dropout).

        Args:
            model: the model (``num_labels == 1``, a layout :func:`sequence_classification_layout` accepts).
            score_type, do_normalize, normalizer_momentum, text_encoding, cost_sign: as for :class:`ScoreModel`.
        """
        layout = sequence_classification_layout(model)
        pooler = model.get_submodule(layout.pooler) if layout.pooler is not None else None
        dropout = getattr(model, "dropout", None) if layout.reads == "first" else None
        score = cls(getattr(model, model.base_model_prefix), score_type=score_type, do_normalize=do_normalize,
                    normalizer_momentum=normalizer_momentum, text_encoding=text_encoding, cost_sign=cost_sign)
        score.layout = layout
        score.score_head = model.get_submodule(layout.head)
        score.pooler = pooler
        score.head_dropout = dropout if isinstance(dropout, nn.Module) else nn.Identity()
        return score

    @property
    def is_encoder(self) -> bool:
        """Whether the backbone is a bidirectional encoder (no packed pairs)."""
        return is_encoder(self.backbone.config)

    def end_index(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B,)`` positions the end scores are read at: the last attended token (lit_safe), the last attended
        non-pad token (a decoder's sequence-classification head) or the first attended token (an encoder's)."""
        if self.layout is None:
            return last_attended_index(attention_mask)
        if self.layout.reads == "first":
            return first_attended_index(attention_mask)
        return last_non_pad_index(input_ids, attention_mask, self.backbone.config.get_text_config().pad_token_id)

    def features(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """What the score head reads: ``(B, L, H)`` last hidden states (through a sequence-classification encoder's
        pooler, token by token, and the head's dropout). A second head on the same features (PPO's shared critic)
        costs no second backbone pass."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        if self.pooler is not None:  # poolers read position 0 of (N, L, H): give each token its own row
            batch, length, width = hidden.shape
            hidden = self.pooler(hidden.reshape(batch * length, 1, width)).reshape(batch, length, -1)
        return self.head_dropout(hidden)

    def head_scores(self, features: Tensor) -> Tensor:
        """Float32 ``(B, L)`` scores of the head on :meth:`features` (negated under ``positive means safe``)."""
        scores = self.score_head(features.to(self.score_head.weight.dtype)).squeeze(-1).float()
        return -scores if self.cost_sign == OPPOSITE_SIGN else scores

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
        end_index: Tensor | None = None,
    ) -> ScoreOutput:
        """Score a batch.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 for real tokens; or a boolean ``(B, 1, L, L)`` mask (True: may attend)
                for rows that pack several sequences (see :func:`lit_safe.models.text.pack_pair`), which
                then need ``position_ids`` and ``end_index`` (decoders only).
            position_ids: ``(B, L)`` positions (default: 0, 1, ... along the row).
            end_index: ``(B,)`` or ``(B, K)`` positions to read end scores at (default: :meth:`end_index`).

        Returns:
            :class:`ScoreOutput` with float32 ``scores (B, L)``, ``end_scores`` shaped like ``end_index`` and
            ``end_index``. With a sequence-classification encoder head, ``scores[:, t]`` is
            ``classifier(dropout(pooler(hidden[:, t])))``, so the score at [CLS] is the model's own logit. Negated
            when the model was loaded with ``cost_sign="positive means safe"``.
        """
        if attention_mask.dim() == 4:
            if self.is_encoder:
                raise ValueError(f"packed pairs (a 4-D attention mask) are a decoder-only feature: "
                                 f"{type(self.backbone).__name__} is a bidirectional encoder, whose scores a "
                                 f"block-causal mask would change; set pack_pairs: false")
            if end_index is None or position_ids is None:
                raise ValueError("a 4-D (packed) attention mask needs explicit position_ids and end_index")
        scores = self.head_scores(self.features(input_ids, attention_mask, position_ids))
        if end_index is None:
            end_index = self.end_index(input_ids, attention_mask)
        raw_end_scores = end_scores = scores.gather(1, end_index.reshape(len(end_index), -1)).reshape(end_index.shape)
        if self.do_normalize:
            scores, end_scores = self.normalizer(scores), self.normalizer(end_scores)
        return ScoreOutput(scores=scores, end_scores=end_scores, end_index=end_index, raw_end_scores=raw_end_scores)

    # ----------------------------------------------------------------------------------------- Hugging Face format
    def score_config(self) -> dict:
        """The score-specific entries written into ``config.json`` (names as in the reference implementation, plus
        lit_safe's ``text_encoding`` and, for a cost model or a negated one, ``cost_sign``)."""
        n = self.normalizer
        config = {
            "score_type": self.score_type,
            "score_dim": 1,
            "do_normalize": self.do_normalize,
            "normalizer_type": "RunningMeanStd" if n.momentum is None else "ExponentialMovingAverage",
            "momentum": n.momentum,
            "mean": float(n.mean),
            "var": float(n.var),
            "count": float(n.count),
            "text_encoding": self.text_encoding,
        }
        if self.score_type == "cost" or self.cost_sign != COST_SIGN:
            config["cost_sign"] = self.cost_sign
        return config

    def save_pretrained(
        self,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, Tensor] | None = None,
        max_shard_size: str = "5GB",
    ) -> Path:
        """Write config, safetensors weights and (optionally) the tokenizer to ``path``, in the layout the model was
        loaded from: lit_safe's ``*ForScore`` (``score_head.*``) or the ``*ForSequenceClassification`` it came from
        (the head under its own name, e.g. ``score.weight``; the raw head, as loaded, whatever ``cost_sign``).

        Args:
            path: output directory (created).
            tokenizer: saved beside the weights when given (with its chat template).
            state_dict: this module's full state dict when the live parameters are sharded (FSDP): gather it first.
            max_shard_size: safetensors shard size for big models.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        if self.layout is None:
            return save_with_heads(path, self.backbone, state_dict, ("score_head.",), self.score_config(), "ForScore",
                                   tokenizer, max_shard_size)
        renames = {"score_head.": f"{self.layout.head}."}
        if self.layout.pooler is not None:
            renames["pooler."] = f"{self.layout.pooler}."
        return save_with_heads(path, self.backbone, state_dict, (), self.score_config(), SEQUENCE_CLASSIFICATION,
                               tokenizer, max_shard_size, renames=renames, architecture=self.layout.architecture)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        revision: str | None = None,
        score_type: ScoreType | None = None,
        attn_implementation: str | None = "sdpa",
        cost_sign: str | None = None,
        text_encoding: TextEncoding | None = None,
    ) -> ScoreModel:
        """Load a score model saved by :meth:`save_pretrained`, a reference ``*ForScore`` checkpoint, or a Hugging
        Face ``*ForSequenceClassification`` checkpoint with one label (its head kept; see the module docstring).

        Args:
            path: local directory or hub id.
            dtype: parameter dtype (``float32``, ``bfloat16``, ``float16``).
            revision: hub revision to pin.
            score_type: override the saved score type (e.g. ``critic`` when a reward model initialises a critic;
                default: the config's ``score_type``, else ``reward``).
            attn_implementation: passed to transformers.
            cost_sign: what the checkpoint's positive scores mean (``positive means unsafe`` or ``positive means
                safe``, then scores are negated); default: the config's ``cost_sign``, else ``positive means unsafe``.
            text_encoding: override how :func:`score_texts` encodes text for it (default: the config's
                ``text_encoding``, else ``tokenizer`` for a sequence-classification checkpoint, ``append_eos``
                otherwise).

        Raises:
            ValueError: not a score model (no ``score_type`` and not a sequence-classification checkpoint), more
                than one label, an unsupported head, or a checkpoint without the trained head's weights.
        """
        config = AutoConfig.from_pretrained(str(path), revision=revision)
        layout = checkpoint_layout(str(path), config, revision)
        if layout is None:
            raise ValueError(f"{path} is not a score model: its config.json has no 'score_type' and it is not a "
                             f"*{SEQUENCE_CLASSIFICATION} checkpoint with one label")
        options = dict(
            score_type=score_type or getattr(config, "score_type", None) or "reward",
            do_normalize=bool(getattr(config, "do_normalize", False)),
            normalizer_momentum=getattr(config, "momentum", None),
            cost_sign=cost_sign or getattr(config, "cost_sign", None) or COST_SIGN,
        )
        saved_encoding = getattr(config, "text_encoding", None)
        if layout == "sequence_classification":
            model = _load_sequence_classification(str(path), config, revision, dtype, attn_implementation, options,
                                                  text_encoding or saved_encoding or "tokenizer")
        else:
            backbone = load_backbone_beside_heads(str(path), ("score_head.",), revision=revision, dtype=DTYPES[dtype],
                                                  attn_implementation=attn_implementation)
            model = cls(backbone, text_encoding=text_encoding or saved_encoding or "append_eos", **options)
            head = read_tensors(str(path), ("score_head.weight", "score_head.bias"), revision)
            if "score_head.weight" not in head:
                raise ValueError(f"{path}: no 'score_head.weight' in the checkpoint")
            model.score_head.weight.data.copy_(head["score_head.weight"].reshape(1, -1))
            if "score_head.bias" in head:
                model.score_head.bias.data.copy_(head["score_head.bias"].reshape(1))
        for key in ("mean", "var", "count"):
            if getattr(config, key, None) is not None:
                getattr(model.normalizer, key).fill_(float(getattr(config, key)))
        return model


def checkpoint_layout(path: str, config, revision: str | None = None) -> CheckpointLayout | None:
    """Which kind of score checkpoint ``path`` is, from its config (``architectures``, ``score_type``), or from its
    weights when the config names no architecture.

    Args:
        path: local directory or hub id.
        config: its loaded ``AutoConfig``.
        revision: hub revision to pin.

    Returns:
        ``sequence_classification`` (a ``*ForSequenceClassification``: ``score.weight`` or ``classifier.weight``),
        ``score_head`` (lit_safe's or the reference's ``*ForScore``: ``score_head.weight``) or ``None`` (a plain
        backbone or language model).
    """
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(SEQUENCE_CLASSIFICATION) for name in architectures):
        return "sequence_classification"
    if getattr(config, "score_type", None) is not None:
        return "score_head"
    if architectures:
        return None
    try:
        keys = read_tensors(path, ("score_head.weight", "score.weight", "classifier.weight"), revision)
    except FileNotFoundError:
        return None
    if "score_head.weight" in keys:
        return "score_head"
    if any(key in keys and keys[key].shape[0] == 1 for key in ("score.weight", "classifier.weight")):
        return "sequence_classification"
    return None


def _load_sequence_classification(path: str, config, revision: str | None, dtype: str,
                                  attn_implementation: str | None, options: dict, text_encoding: str) -> ScoreModel:
    """Load a ``*ForSequenceClassification`` checkpoint as a :class:`ScoreModel` (see
    :meth:`ScoreModel.from_pretrained`), refusing one whose trained head would be replaced by a random one."""
    from transformers import AutoModelForSequenceClassification

    architectures = getattr(config, "architectures", None) or []
    if architectures and config.num_labels != 1:
        raise ValueError(f"{path}: {architectures[0]} has num_labels={config.num_labels}; a score model needs a "
                         f"single output (num_labels=1)")
    extra = {} if architectures else {"num_labels": 1}  # a config without architectures defaults to 2 labels
    if attn_implementation == "sdpa":  # the default; fall back to the model's own attention where it has no SDPA
        model_class = AutoModelForSequenceClassification._model_mapping.get(type(config), None)
        if model_class is not None and not getattr(model_class, "_supports_sdpa", False):
            attn_implementation = None
    hf, info = AutoModelForSequenceClassification.from_pretrained(
        path, revision=revision, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
        output_loading_info=True, **extra,
    )
    model = ScoreModel.from_sequence_classification(hf, text_encoding=text_encoding, **options)
    head = tuple(f"{name}." for name in (model.layout.head, model.layout.pooler) if name is not None)
    missing = sorted(key for key in info.get("missing_keys", ()) if key.startswith(head))
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks the trained head's weights ({', '.join(missing)}); "
                         f"transformers would start a random head")
    return model


def save_with_heads(
    path: str | Path,
    backbone: PreTrainedModel,
    state_dict: dict[str, Tensor],
    heads: tuple[str, ...],
    config_entries: dict,
    architecture_suffix: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_shard_size: str = "5GB",
    *,
    renames: dict[str, str] | None = None,
    architecture: str | None = None,
) -> Path:
    """Write a backbone-plus-heads model in the Hugging Face format (score and moderation models).

    The ``backbone.*`` entries of ``state_dict`` are saved under the backbone's ``base_model_prefix`` (so that
    ``AutoModel.from_pretrained`` reads them), the entries starting with one of ``heads`` as they are, those starting
    with a key of ``renames`` under that prefix's new name; ``config.json`` is the backbone's config plus
    ``config_entries``, with ``architectures`` ``[architecture]``, by default ``<Backbone><architecture_suffix>``.

    Returns:
        ``path``.
    """
    from huggingface_hub import save_torch_state_dict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    prefix = backbone.base_model_prefix or "model"
    weights = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            weights[f"{prefix}.{key.removeprefix('backbone.')}"] = own_storage(value)
        elif key.startswith(heads):
            weights[key] = own_storage(value)
        else:
            old = next((name for name in renames or {} if key.startswith(name)), None)
            if old is not None:
                weights[renames[old] + key.removeprefix(old)] = own_storage(value)
    save_torch_state_dict(weights, path, max_shard_size=max_shard_size)
    config = backbone.config.to_dict()
    config.update(config_entries)
    config["architectures"] = [architecture or type(backbone).__name__.removesuffix("Model") + architecture_suffix]
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def own_storage(tensor: Tensor) -> Tensor:
    """A CPU tensor that owns its storage (gathered FSDP weights can be views into one flat buffer, which
    safetensors refuses to save)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def read_tensors(path: str, keys: tuple[str, ...], revision: str | None) -> dict[str, Tensor]:
    """Read a few named tensors from a (possibly sharded) safetensors or ``.bin`` checkpoint."""
    from safetensors import safe_open

    local = Path(path)
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(path, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    out: dict[str, Tensor] = {}
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (local / index_name).exists():
            weight_map = json.loads((local / index_name).read_text())["weight_map"]
            files = sorted({weight_map[k] for k in keys if k in weight_map})
        elif (local / single).exists():
            files = [single]
        else:
            continue
        for name in files:
            if name.endswith(".safetensors"):
                with safe_open(str(local / name), framework="pt") as f:
                    out.update({k: f.get_tensor(k) for k in keys if k in f.keys()})
            else:
                state = torch.load(local / name, map_location="cpu", weights_only=True)
                out.update({k: state[k] for k in keys if k in state})
        return out
    raise FileNotFoundError(f"{path}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json) found")


class SharedCritic(nn.Module):
    """Two value heads on one score model's features: PPO-Lagrangian's reward and cost critics sharing a backbone.

    The reward values are ``critic``'s own head; the cost values a second ``Linear(hidden, 1)`` (initialised as a
    new score head is) on the same :meth:`ScoreModel.features`, so one backbone pass gives both.

    Args:
        critic: the reward critic (its backbone and head are kept).
    """

    def __init__(self, critic: ScoreModel) -> None:
        super().__init__()
        self.critic = critic
        width = hidden_size(critic.backbone)
        self.cost_head = nn.Linear(width, 1, bias=True, dtype=critic.score_head.weight.dtype)
        nn.init.normal_(self.cost_head.weight, std=1.0 / math.sqrt(width + 1))
        nn.init.zeros_(self.cost_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """Float32 ``(B, L)`` reward values and cost values at every token."""
        features = self.critic.features(input_ids, attention_mask, position_ids)
        cost = self.cost_head(features.to(self.cost_head.weight.dtype)).squeeze(-1).float()
        return self.critic.head_scores(features), cost


def build_score_model(
    backbone: str,
    tokenizer: PreTrainedTokenizerBase,
    score_type: ScoreType,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    do_normalize: bool = False,
    normalizer_momentum: float | None = None,
    gradient_checkpointing: bool = False,
    cost_sign: str | None = None,
    text_encoding: TextEncoding | None = None,
) -> ScoreModel:
    """A score model on ``backbone``: a preset, an LM checkpoint (new head), or a saved score model (its head too).

    Args:
        backbone: preset name, hub id or local path. A score checkpoint (:func:`checkpoint_layout`: lit_safe's or the
            reference's, whose config has ``score_type``, or a Hugging Face ``*ForSequenceClassification`` with one
            label) is loaded with its trained head and normaliser statistics (to continue training, or to
            initialise a critic); anything else gets a new head.
        tokenizer: the matching tokenizer (embeddings are resized if it added tokens; a sequence-classification
            model whose config has no pad token takes the tokenizer's).
        score_type: ``reward``, ``cost`` or ``critic``.
        dtype: parameter dtype.
        revision: hub revision to pin.
        do_normalize: normalise returned scores with the running statistics.
        normalizer_momentum: ``None`` (exact running statistics) or an EMA momentum.
        gradient_checkpointing: recompute activations in the backward pass (saves memory on big models).
        cost_sign: what the checkpoint's positive scores mean (see :meth:`ScoreModel.from_pretrained`); for a new
            head, ``positive means unsafe``.
        text_encoding: override how :func:`score_texts` encodes text for the model (see :class:`ScoreModel`).
    """
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.tokenizer import is_preset, resolve_pretrained

    source = None if is_preset(backbone) else resolve_pretrained(backbone)
    config = None if source is None else AutoConfig.from_pretrained(source, revision=revision)
    if config is not None and checkpoint_layout(source, config, revision) is not None:
        model = ScoreModel.from_pretrained(source, dtype=dtype, revision=revision, score_type=score_type,
                                           cost_sign=cost_sign, text_encoding=text_encoding)
        model.do_normalize = do_normalize
        model.normalizer.momentum = normalizer_momentum
        if len(tokenizer) > model.backbone.get_input_embeddings().num_embeddings:
            model.backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        text_config = model.backbone.config.get_text_config()
        if model.layout is not None and text_config.pad_token_id is None:
            text_config.pad_token_id = tokenizer.pad_token_id  # transformers cannot score a padded batch without it
    else:
        model = ScoreModel(
            load_backbone(backbone, tokenizer, dtype=dtype, revision=revision),
            score_type=score_type,
            do_normalize=do_normalize,
            normalizer_momentum=normalizer_momentum,
            text_encoding=text_encoding or "append_eos",
            cost_sign=cost_sign or COST_SIGN,
        )
    if gradient_checkpointing:
        model.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def score_pairs(model: ScoreModel, batch: dict) -> tuple[Tensor, Tensor, ScoreOutput]:
    """End scores of both responses of every pair in a batch of a pair view (unpacked or packed).

    Args:
        model: the score model.
        batch: unpacked, ``input_ids``/``attention_mask`` ``(2B, L)`` with the B first responses, then the B second
            ones; or packed (``pack_pairs``), one row per pair with ``pair_attention``, ``position_ids`` and
            ``end_index (B, 2)``.

    Returns:
        ``(first (B,), second (B,), the model output)``.
    """
    if "pair_attention" in batch:  # one row per pair, shared prompt computed once
        out = model(batch["input_ids"], batch["pair_attention"], batch["position_ids"], batch["end_index"])
        first, second = out.end_scores.unbind(-1)
    else:
        out = model(batch["input_ids"], batch["attention_mask"])
        first, second = out.end_scores.chunk(2)
    return first, second, out


def encode_score_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
                       text_encoding: TextEncoding = "append_eos") -> list[np.ndarray]:
    """Token ids of full conversations, encoded the way a score model expects (its ``text_encoding``).

    Args:
        tokenizer: the score model's tokenizer.
        texts: full conversations (prompt in its template, then the response).
        max_length: the longest sequence to produce.
        text_encoding: ``append_eos``: the tokenizer's special tokens (BOS), cut to ``max_length - 1`` tokens, then
            EOS (:func:`lit_safe.models.text.encode_with_eos`; how lit_safe trains score models). ``tokenizer``:
            exactly the tokenizer's own encoding, truncated by it to ``max_length`` (BERT: ``[CLS] ... [SEP]``;
            Llama: BOS, no EOS); a text that already starts with the BOS token (rendered by a chat template) gets no
            second one.

    Returns:
        One int32 array per text.
    """
    if text_encoding == "append_eos":
        return encode_with_eos(tokenizer, texts, max_length)[0]
    if text_encoding != "tokenizer":
        raise ValueError(f"text_encoding must be one of {TEXT_ENCODINGS}, got {text_encoding!r}")
    bos = tokenizer.bos_token
    rendered = [bool(bos) and text.startswith(bos) for text in texts]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int32)] * len(texts)
    for has_bos in (False, True):
        rows = [i for i, flag in enumerate(rendered) if flag == has_bos]
        if not rows:
            continue
        encoded = tokenizer([texts[i] for i in rows], add_special_tokens=not has_bos, truncation=True,
                            max_length=max_length)["input_ids"]
        for i, ids in zip(rows, encoded):
            out[i] = np.asarray(ids, dtype=np.int32)
    return out


@torch.no_grad()
def score_texts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
                batch_size: int | None = None) -> Tensor:
    """End scores ``(N,)`` of a score model on full conversations (prompt in its template, then the response),
    tokenised the way the model expects (:func:`encode_score_texts` with its ``text_encoding``; ``append_eos`` for a
    model without one), right-padded, on the model's device.

    Args:
        model: a :class:`ScoreModel` (anything returning ``end_scores`` from ``(input_ids, attention_mask)``).
        tokenizer: the model's tokenizer.
        texts: the conversations.
        max_length: longest sequence the model reads (EOS included); capped at the backbone's
            ``max_position_embeddings`` (an encoder has no positions beyond it).
        batch_size: texts per forward pass (``None``: all at once).
    """
    device = next(model.parameters()).device
    config = getattr(getattr(model, "backbone", None), "config", None)
    positions = getattr(config.get_text_config(), "max_position_embeddings", None) if config is not None else None
    if positions:
        max_length = min(max_length, int(positions))
    encoding = getattr(model, "text_encoding", "append_eos")
    size = batch_size or max(1, len(texts))
    scores = []
    for start in range(0, len(texts), size):
        encoded = encode_score_texts(tokenizer, texts[start : start + size], max_length, encoding)
        ids, mask = pad_right(encoded, tokenizer.pad_token_id)
        scores.append(model(ids.to(device), mask.to(device)).end_scores)
    return torch.cat(scores)


@torch.no_grad()
def score_conversations(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[Text],
                        responses: list[str], template: str, max_length: int, batch_size: int | None = None) -> Tensor:
    """End scores ``(N,)`` (float32, on the model's device) of a score model on (prompt, response) pairs, each read
    the way the model reads a conversation: for a ``{prompt}`` template or a Hugging Face reward model
    (``text_encoding: tokenizer``), the conversation text (``chat``: rendered by ``tokenizer``'s own chat template)
    through :func:`score_texts`; a lit_safe score model under ``chat`` reads the ids its pair view trained it on
    (:func:`~lit_safe.models.text.encode_conversations`: prompt, reply and the template's end-of-turn ids).

    Args:
        model: a :class:`ScoreModel`.
        tokenizer: its tokenizer (for ``chat``, with a chat template).
        prompts: user prompts (strings, or for ``chat`` lists of ``{"role", "content"}`` turns).
        responses: the assistant's replies.
        template: a ``{prompt}`` template or ``chat``.
        max_length: longest sequence the model reads (capped at its ``max_position_embeddings``).
        batch_size: conversations per forward pass (``None``: all at once).
    """
    if not is_chat(template) or getattr(model, "text_encoding", "append_eos") == "tokenizer":
        texts = conversations(prompts, responses, template, tokenizer)
        return score_texts(model, tokenizer, texts, max_length, batch_size).float()
    config = getattr(getattr(model, "backbone", None), "config", None)
    positions = getattr(config.get_text_config(), "max_position_embeddings", None) if config is not None else None
    max_length = min(max_length, int(positions)) if positions else max_length
    device = next(model.parameters()).device
    size = batch_size or max(1, len(prompts))
    scores = [torch.zeros(0, device=device)]
    for start in range(0, len(prompts), size):
        ids, _ = encode_conversations(tokenizer, prompts[start : start + size], responses[start : start + size],
                                      template, max_length)
        ids, mask = pad_right(ids, tokenizer.pad_token_id)
        scores.append(model(ids.to(device), mask.to(device)).end_scores.float())
    return torch.cat(scores)


def export_score_model(model: nn.Module, tokenizer, path: str | Path, *, root: nn.Module, prefix: str,
                       **config) -> Path | None:
    """Write a (possibly sharded) score or moderation model in the Hugging Face format; call on every rank
    (gathering is a collective), rank 0 writes.

    Args:
        model: the model (anything with ``backbone`` and ``save_pretrained(path, tokenizer=, state_dict=)``).
        tokenizer: saved beside the weights.
        path: output directory.
        root: the module holding ``model`` as the strategy wrapped it (see
            :func:`lit_safe.models.sharding.full_state_dict`).
        prefix: ``model``'s name inside ``root`` with a trailing dot.
        config: extra entries for ``config.json`` (e.g. the cost sign convention).
    """
    from lit_safe.models.sharding import full_state_dict, is_writer

    state = full_state_dict(model, root, prefix=prefix)
    if not is_writer():
        return None
    for key, value in config.items():
        setattr(model.backbone.config, key, value)
    return model.save_pretrained(path, tokenizer=tokenizer, state_dict=state)
