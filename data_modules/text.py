"""Prompt templates and tokenisation of (prompt, response) text, shared by every text view.

The default template is the Safe RLHF one (``BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:``, no space
after ``ASSISTANT:``, the response, then EOS). It is a config value because real models' chat templates differ.
Truncation follows ALGORITHMS.md section 2(b): the text is cut first and EOS appended after, so a sequence always
ends in EOS and a score model always reads its end score there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"


def format_prompt(prompt: str, template: str = SAFE_RLHF_TEMPLATE) -> str:
    """Put a user prompt into the conversation template (``template`` must contain ``{prompt}``)."""
    if "{prompt}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{prompt}}' placeholder")
    return template.replace("{prompt}", prompt)


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
