"""Backbones: any Hugging Face transformer by hub id or local path, or a built-in Llama-style preset.

``tiny`` (about 0.3M parameters) is the embedded default that trains in seconds on a CPU; ``small`` (about 25M)
is big enough for throughput and MFU measurements. Both are ordinary ``LlamaConfig`` models with the project's
own offline tokenizer (:mod:`lit_safe.models.tokenizer`), so they save with ``save_pretrained`` and load with
``AutoModel.from_pretrained`` exactly like a model from the hub.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_safe.models.tokenizer import is_preset, resolve_pretrained

# Llama-style architectures of the presets (the vocabulary size comes from the tokenizer).
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024),
    # Wide and shallow for CPU GEMM efficiency (benchmarks/README.md): 3 layers of width 768, MLP 2048 (8/3 x 768),
    # head_dim 128; about 24.4M parameters with the 4,096-token preset vocabulary (21.2M without the embedding).
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=6, max_position_embeddings=2048),
}

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """The ``LlamaConfig`` of a preset, with vocabulary and special token ids taken from ``tokenizer``."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; presets: {sorted(PRESETS)}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        **PRESETS[name],
    )


def load_backbone(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    causal_lm: bool = False,
    dtype: str = "float32",
    revision: str | None = None,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Build or load a transformer backbone that matches ``tokenizer``.

    Args:
        name_or_path: a preset (``tiny``, ``small``; randomly initialised, seeded by the caller), a hub id (read
            from its offline package when one is installed), or a local directory written by ``save_pretrained``.
        tokenizer: the tokenizer from :func:`lit_safe.models.tokenizer.load_tokenizer`. If it has more tokens
            than the model's embedding (a pad token was added), the embeddings are resized; the new rows start at
            the mean of the old ones.
        causal_lm: ``True`` for a model with its language-model head (policies), ``False`` for the bare
            transformer that a score head sits on (reward, cost, critics).
        dtype: parameter dtype, one of ``float32``, ``bfloat16``, ``float16``.
        revision: the hub revision to pin (ignored for presets and local paths).
        attn_implementation: passed to transformers (``sdpa``, ``eager``, ``flash_attention_2``).

    Returns:
        The model, in training mode, with ``config.pad_token_id`` set from the tokenizer.

    Raises:
        ValueError: ``name_or_path`` is neither a preset, a directory nor a hub id (a typo such as ``tinyy``; the
            message lists the presets), or ``dtype`` is unknown.
        FileNotFoundError: a path that does not exist, or a hub id that is not in the cache while the hub is
            offline (:func:`lit_safe.models.tokenizer.resolve_pretrained`); checked before anything is built.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    if is_preset(name_or_path):
        config = preset_config(name_or_path, tokenizer)
        model = auto.from_config(config, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    elif causal_lm:
        model = auto.from_pretrained(resolve_pretrained(name_or_path, what="backbone"), revision=revision,
                                     dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    else:  # the bare transformer of a causal LM: its language-model head is left behind on purpose
        model = load_backbone_beside_heads(resolve_pretrained(name_or_path, what="backbone"), ("lm_head.",),
                                           revision=revision, dtype=DTYPES[dtype],
                                           attn_implementation=attn_implementation)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model


def sampling_config(max_new_tokens: int, temperature: float, top_p: float, pad_token_id: int,
                    stop_ids: list[int]) -> GenerationConfig:
    """Generation settings that sample from exactly the policy at ``temperature`` within nucleus ``top_p`` (greedy at
    temperature 0), stopping at any of ``stop_ids``, with the KV cache: a complete configuration, so that nothing of
    a model's own ``generation_config.json`` (a ``top_k``, ``repetition_penalty`` or ``min_p`` of its release, or
    transformers' default ``top_k = 50``) silently changes the distribution the responses are drawn from."""
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {
        "do_sample": False}
    return GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, use_cache=True,
                            eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0], **sampling)


def hidden_size(model: PreTrainedModel) -> int:
    """The width of the last hidden state (``hidden_size``, ``n_embd`` or ``d_model`` depending on the family)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot find the hidden size in the config of {type(model).__name__}")


def is_encoder(config) -> bool:
    """Whether a transformers config is a bidirectional encoder's (BERT, RoBERTa, DeBERTa, ...): its model type has a
    masked-LM head in transformers. Such a model sees the whole sequence at every position, so it cannot score packed
    sequences (a block-causal mask would change what it computes)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a Hugging Face model (the unit FSDP shards and checkpointing wraps).

    Found by the class names the model itself declares unsplittable (``_no_split_modules``, e.g.
    ``LlamaDecoderLayer``), so it works for any architecture transformers supports.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} declares no _no_split_modules: cannot find its transformer blocks")
    return blocks


def load_backbone_beside_heads(path: str, heads: tuple[str, ...], **kwargs) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` of a checkpoint that saves a backbone beside lit_safe's own heads (score,
    moderation and video models): transformers' load report, which lists the heads' weights as unexpected on every
    load, is not printed; a backbone weight the checkpoint lacks (it would start random) or an unknown extra weight is
    still said, in one warning.

    Args:
        path: local directory or hub id.
        heads: prefixes of the head weights saved beside the backbone (``"score_head."``).
        kwargs: passed to ``from_pretrained`` (revision, dtype, attn_implementation).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        backbone, info = AutoModel.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    prefix = f"{backbone.base_model_prefix}." if backbone.base_model_prefix else ""
    missing = sorted(info.get("missing_keys") or ())
    unknown = sorted(k for k in info.get("unexpected_keys") or () if not k.removeprefix(prefix).startswith(heads)
                     and not k.startswith(heads))
    if missing or unknown:
        said = [f"missing (they start random): {', '.join(missing[:5])}" if missing else "",
                f"not used: {', '.join(unknown[:5])}" if unknown else ""]
        warnings.warn(f"{path}: backbone weights {'; '.join(x for x in said if x)}", stacklevel=2)
    return backbone
