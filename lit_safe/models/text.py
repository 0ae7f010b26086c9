"""Text as the models read it: prompt templates, tokenisation with EOS, padding and pair packing.

The one place for these rules, used by the data views (to prepare), the trainers (PPO re-encodes rollouts for a
scorer with another tokenizer) and the arenas (to generate and score): the same template and the same truncation
everywhere, so that a model is never scored on text tokenised differently from what it was trained on.

The default template is the Safe RLHF one (``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:``, no space
after ``ASSISTANT:``, the response, then EOS). It is a config value because real models' chat templates differ.
Truncation follows ALGORITHMS.md section 2(b): the text is cut first and EOS appended after, so a sequence always
ends in EOS and a score model always reads its end score there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
REWRITE_TEMPLATE = (
    "Rewrite the user's request as a detailed prompt for a text-to-video model.\nRequest: {prompt}\nVideo prompt: "
)
VIDEO_TEMPLATE = "{prompt}"


def format_prompt(prompt: str, template: str = SAFE_RLHF_TEMPLATE) -> str:
    """Put a user prompt into the conversation template (``template`` must contain ``{prompt}``)."""
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} does not contain '{{prompt}}' (where the prompt goes)")
    return template.replace("{prompt}", prompt)


def conversations(prompts: Sequence[str], responses: Sequence[str], template: str = SAFE_RLHF_TEMPLATE) -> list[str]:
    """Each (prompt, response) as the one text a score model reads: the prompt in the template, then the response."""
    return [format_prompt(p, template) + r for p, r in zip(prompts, responses)]


def encode_with_eos(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[np.ndarray], int]:
    """Tokenise texts (with the tokenizer's BOS), cut each to ``max_length - 1`` tokens and append EOS.

    Args:
        tokenizer: any tokenizer with an ``eos_token_id``.
        texts: full conversations (prompt in its template, then the response).
        max_length: the longest sequence to produce, EOS included.

    Returns:
        ``(ids, truncated)``: one int32 array per text, every one ending in EOS; and how many texts were cut.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    if not texts:  # every row of a split was dropped (tokenizers fail on an empty batch)
        return [], 0
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    out, truncated = [], 0
    for ids in encoded:
        if ids and ids[-1] == eos:  # tokenizers that append EOS themselves
            ids = ids[:-1]
        if len(ids) > max_length - 1:
            ids = ids[: max_length - 1]
            truncated += 1
        out.append(np.asarray([*ids, eos], dtype=np.int32))
    return out, truncated


def shared_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading tokens two different sequences share, at most ``min(len) - 1`` (so each keeps its EOS)."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(min(differ[0] if len(differ) else m, m - 1))


def pack_pair(chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pack two sequences that share a prefix (the prompt) into one row, the prefix computed once.

    The row is ``chosen`` followed by the part of ``rejected`` after the shared prefix; the positions of that
    part continue from the prefix, and :func:`pair_attention` keeps it from seeing ``chosen``'s own tokens, so
    every token attends to exactly what it would attend to in its own sequence: the scores are those of two
    separate forward passes, for fewer tokens.

    Args:
        chosen, rejected: 1-D token ids, both ending in EOS, not identical.

    Returns:
        ``(ids (Lc + Lr - d,), positions (same,), shared d, chosen length Lc)``.
    """
    d = shared_prefix_length(chosen, rejected)
    ids = np.concatenate([chosen, rejected[d:]])
    positions = np.concatenate([np.arange(len(chosen)), np.arange(d, len(rejected))])
    return ids, positions, d, len(chosen)


def pair_attention(lengths: list[int], shared: list[int], chosen: list[int], width: int):
    """Boolean attention masks ``(N, 1, width, width)`` (True: may attend) of rows made by :func:`pack_pair`.

    A query attends causally to keys of the shared prefix and of its own sequence; the rejected part never sees
    the chosen part. Padding keys are masked; padding queries attend to position 0 only (a row with no allowed key
    would give NaN in softmax).
    """
    pos = torch.arange(width)
    n, d, c = (torch.as_tensor(v).unsqueeze(1) for v in (lengths, shared, chosen))
    # segment per token: 0 shared prefix, 1 chosen only, 2 rejected only, -1 padding
    segment = torch.where(pos < d, 0, torch.where(pos < c, 1, torch.where(pos < n, 2, -1)))
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)
    causal = (pos.unsqueeze(0) <= pos.unsqueeze(1)).unsqueeze(0)
    mask = ((key == 0) | (key == query)) & causal & (query >= 0) & (key >= 0)
    mask[:, :, 0] |= query.squeeze(2) < 0
    return mask.unsqueeze(1)


def encode_prompts(tokenizer: Any, prompts: list[str], template: str) -> list[np.ndarray]:
    """Prompts in the template, tokenised with the tokenizer's special tokens (BOS), no EOS: int32 arrays."""
    if not prompts:
        return []
    encoded = tokenizer([format_prompt(p, template) for p in prompts], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [np.asarray(ids[:-1] if ids and ids[-1] == eos else ids, dtype=np.int32) for ids in encoded]


def encode_prompt_texts(tokenizer: Any, prompts: list[str], template: str, max_length: int) -> tuple[list, int]:
    """The user prompts as the video models read them: template, BOS, cut to ``max_length`` with EOS."""
    return encode_with_eos(tokenizer, [format_prompt(p, template) for p in prompts], max_length)


def pad_right(sequences: list[np.ndarray], pad_id: int, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D int arrays into ``(ids (N, L), attention_mask (N, L))``; ``L`` rounds up to ``multiple_of``."""
    length = max(len(s) for s in sequences)
    length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def pad_left(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D int arrays (for generation): ``(ids (N, L), attention_mask (N, L))``."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, length - len(seq) :] = 1
    return ids, mask
