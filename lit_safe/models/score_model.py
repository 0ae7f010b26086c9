"""Score models: a transformer backbone with a linear head on every token (reward, cost and critic models).

Follows Safe RLHF (Dai et al., arXiv 2310.12773) and its reference implementation: ``Linear(hidden, 1)`` with the
bias initialised to 0 on the last hidden state of every token, the sequence's score read at its last attended
token (the EOS under right padding), and an optional running normaliser of end scores (``reward``: affine
``(s - mu) / sigma``; ``cost``: scale only ``s / sigma``, so the sign that means safe/unsafe survives; ``critic``:
none). Departures: the end index comes from the attention mask only (never ``ids != pad``, which breaks for
tokenizers whose pad token is their EOS), and the normaliser is updated by the caller with gathered scores.

A trained score model saves in the Hugging Face format: ``config.json`` (the backbone's config plus
``score_type``, ``score_dim``, ``do_normalize``, ``normalizer_type``, ``momentum``, ``mean``, ``var``, ``count``),
safetensors weights with the backbone under its ``base_model_prefix`` and the head as ``score_head.*`` (the layout
of the reference's released ``beaver-7b-*-reward``/``-cost`` models, which this loader also reads), and the
tokenizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from lit_safe.models.backbone import DTYPES, hidden_size
from lit_safe.models.text import encode_with_eos, pad_right

ScoreType = Literal["reward", "cost", "critic"]
SCORE_CONFIG_KEYS = ("score_type", "score_dim", "do_normalize", "normalizer_type", "momentum", "mean", "var", "count")


def last_attended_index(attention_mask: Tensor) -> Tensor:
    """Index of the last attended token of each sequence, under left or right padding.

    Args:
        attention_mask: ``(B, L)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(B,)`` long tensor. A row with no attended token is an error.
    """
    mask = attention_mask.bool()
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("a sequence has no attended token (an all-zero attention-mask row)")
    positions = torch.arange(mask.size(-1), device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=-1).values


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

    Args:
        backbone: a Hugging Face base model (``AutoModel``) returning ``last_hidden_state``.
        score_type: ``reward``, ``cost`` or ``critic``: selects the normalisation and is saved in the config.
        do_normalize: apply the running normaliser to the returned scores (the statistics are kept either way).
        normalizer_momentum: see :class:`ScoreNormalizer`.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        score_type: ScoreType = "reward",
        do_normalize: bool = False,
        normalizer_momentum: float | None = None,
    ) -> None:
        super().__init__()
        if score_type not in ("reward", "cost", "critic"):
            raise ValueError(f"score_type must be reward, cost or critic, got {score_type!r}")
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            # Scores come from the last hidden states: an encoder's own pooler (BERT's) would get no gradient, which
            # DDP with find_unused_parameters=False rejects ("Expected to have finished reduction ...").
            backbone.pooler = None
        self.backbone = backbone
        self.score_type = score_type
        self.do_normalize = do_normalize
        width = hidden_size(backbone)
        dtype = backbone.get_input_embeddings().weight.dtype
        self.score_head = nn.Linear(width, 1, bias=True, dtype=dtype)
        nn.init.normal_(self.score_head.weight, std=1.0 / math.sqrt(width + 1))
        nn.init.zeros_(self.score_head.bias)
        self.normalizer = ScoreNormalizer(score_type, normalizer_momentum)

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
                then need ``position_ids`` and ``end_index``.
            position_ids: ``(B, L)`` positions (default: 0, 1, ... along the row).
            end_index: ``(B,)`` or ``(B, K)`` positions to read end scores at (default: the last attended token).

        Returns:
            :class:`ScoreOutput` with float32 ``scores (B, L)``, ``end_scores`` shaped like ``end_index`` and
            ``end_index``.
        """
        if attention_mask.dim() == 4 and (end_index is None or position_ids is None):
            raise ValueError("a 4-D (packed) attention mask needs explicit position_ids and end_index")
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        scores = self.score_head(hidden.to(self.score_head.weight.dtype)).squeeze(-1).float()
        if end_index is None:
            end_index = last_attended_index(attention_mask)
        raw_end_scores = end_scores = scores.gather(1, end_index.reshape(len(end_index), -1)).reshape(end_index.shape)
        if self.do_normalize:
            scores, end_scores = self.normalizer(scores), self.normalizer(end_scores)
        return ScoreOutput(scores=scores, end_scores=end_scores, end_index=end_index, raw_end_scores=raw_end_scores)

    # ----------------------------------------------------------------------------------------- Hugging Face format
    def score_config(self) -> dict:
        """The score-specific entries written into ``config.json`` (names as in the reference implementation)."""
        n = self.normalizer
        return {
            "score_type": self.score_type,
            "score_dim": 1,
            "do_normalize": self.do_normalize,
            "normalizer_type": "RunningMeanStd" if n.momentum is None else "ExponentialMovingAverage",
            "momentum": n.momentum,
            "mean": float(n.mean),
            "var": float(n.var),
            "count": float(n.count),
        }

    def save_pretrained(
        self,
        path: str | Path,
        tokenizer: PreTrainedTokenizerBase | None = None,
        state_dict: dict[str, Tensor] | None = None,
        max_shard_size: str = "5GB",
    ) -> Path:
        """Write config, safetensors weights and (optionally) the tokenizer to ``path``.

        Args:
            path: output directory (created).
            tokenizer: saved beside the weights when given.
            state_dict: this module's full state dict when the live parameters are sharded (FSDP): gather it first.
            max_shard_size: safetensors shard size for big models.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        return save_with_heads(path, self.backbone, state_dict, ("score_head.",), self.score_config(), "ForScore",
                               tokenizer, max_shard_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        revision: str | None = None,
        score_type: ScoreType | None = None,
        attn_implementation: str | None = "sdpa",
    ) -> ScoreModel:
        """Load a score model saved by :meth:`save_pretrained` (or a reference ``*ForScore`` checkpoint).

        Args:
            path: local directory or hub id.
            dtype: parameter dtype (``float32``, ``bfloat16``, ``float16``).
            revision: hub revision to pin.
            score_type: override the saved score type (e.g. ``critic`` when a reward model initialises a critic).
            attn_implementation: passed to transformers.
        """
        config = AutoConfig.from_pretrained(str(path), revision=revision)
        if getattr(config, "score_type", None) is None:
            raise ValueError(f"{path} is not a score model: its config.json has no 'score_type'")
        backbone = AutoModel.from_pretrained(
            str(path), revision=revision, dtype=DTYPES[dtype], attn_implementation=attn_implementation
        )
        model = cls(
            backbone,
            score_type=score_type or config.score_type,
            do_normalize=bool(getattr(config, "do_normalize", False)),
            normalizer_momentum=getattr(config, "momentum", None),
        )
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


def save_with_heads(
    path: str | Path,
    backbone: PreTrainedModel,
    state_dict: dict[str, Tensor],
    heads: tuple[str, ...],
    config_entries: dict,
    architecture_suffix: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write a backbone-plus-heads model in the Hugging Face format (score and moderation models).

    The ``backbone.*`` entries of ``state_dict`` are saved under the backbone's ``base_model_prefix`` (so that
    ``AutoModel.from_pretrained`` reads them), the entries starting with one of ``heads`` as they are; ``config.json``
    is the backbone's config plus ``config_entries``, with ``architectures`` ``<Backbone><architecture_suffix>``.

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
    save_torch_state_dict(weights, path, max_shard_size=max_shard_size)
    config = backbone.config.to_dict()
    config.update(config_entries)
    config["architectures"] = [type(backbone).__name__.removesuffix("Model") + architecture_suffix]
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
) -> ScoreModel:
    """A score model on ``backbone``: a preset, an LM checkpoint (new head), or a saved score model (its head too).

    Args:
        backbone: preset name, hub id or local path. A path whose config has ``score_type`` is loaded with its
            trained head and normaliser statistics (to continue training, or to initialise a critic).
        tokenizer: the matching tokenizer (embeddings are resized if it added tokens).
        score_type: ``reward``, ``cost`` or ``critic``.
        dtype: parameter dtype.
        revision: hub revision to pin.
        do_normalize: normalise returned scores with the running statistics.
        normalizer_momentum: ``None`` (exact running statistics) or an EMA momentum.
        gradient_checkpointing: recompute activations in the backward pass (saves memory on big models).
    """
    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.tokenizer import is_preset, resolve_pretrained

    config = None if is_preset(backbone) else AutoConfig.from_pretrained(resolve_pretrained(backbone),
                                                                          revision=revision)
    if config is not None and getattr(config, "score_type", None) is not None:
        model = ScoreModel.from_pretrained(backbone, dtype=dtype, revision=revision, score_type=score_type)
        model.do_normalize = do_normalize
        model.normalizer.momentum = normalizer_momentum
        if len(tokenizer) > model.backbone.get_input_embeddings().num_embeddings:
            model.backbone.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    else:
        model = ScoreModel(
            load_backbone(backbone, tokenizer, dtype=dtype, revision=revision),
            score_type=score_type,
            do_normalize=do_normalize,
            normalizer_momentum=normalizer_momentum,
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


@torch.no_grad()
def score_texts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int,
                batch_size: int | None = None) -> Tensor:
    """End scores ``(N,)`` of a score model on full conversations (prompt in its template, then the response),
    tokenised as the model was trained (:func:`lit_safe.models.text.encode_with_eos`), on the model's device.

    Args:
        model: a :class:`ScoreModel` (anything returning ``end_scores`` from ``(input_ids, attention_mask)``).
        tokenizer: the model's tokenizer.
        texts: the conversations.
        max_length: longest sequence the model reads (EOS included).
        batch_size: texts per forward pass (``None``: all at once).
    """
    device = next(model.parameters()).device
    size = batch_size or max(1, len(texts))
    scores = []
    for start in range(0, len(texts), size):
        encoded, _ = encode_with_eos(tokenizer, texts[start : start + size], max_length)
        ids, mask = pad_right(encoded, tokenizer.pad_token_id)
        scores.append(model(ids.to(device), mask.to(device)).end_scores)
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
