"""Views for training policies: ``sft`` (supervised fine-tuning on responses) and ``prompts`` (prompts to generate
from, for PPO rollouts and the arena).

``sft`` items are ``{"input_ids": int32 (L,), "prompt_length": int, "row": int}``: the prompt in the conversation
template (with the tokenizer's BOS), then the response and EOS. The prompt and the response are tokenised
separately and concatenated, so that the boundary is exact: the loss masks exactly the prompt's tokens
(ALGORITHMS.md section 6), and a policy generating from the ``prompts`` view starts from the very same ids. Batches:
``input_ids``, ``attention_mask`` and ``labels (B, L)`` (right padding; labels are -100 on prompt and padding), and
``row (B,)``. A response longer than the room after its prompt is cut before its EOS; a prompt that leaves no room
for a response token is dropped and counted (``prompt_too_long``).

``prompts`` items are ``{"input_ids": int32 (P,), "row": int}``, one per distinct prompt (repeats are dropped and
counted as ``duplicate_prompt``). Batches: ``input_ids`` and ``attention_mask (B, P)`` *left*-padded, as generation
needs, and ``row (B,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.streaming import pad_left, pad_right
from lit_safe.data_modules.text import format_prompt

IGNORE_INDEX = -100
ENCODE_CHUNK = 8192


def encode_prompts(tokenizer: Any, prompts: list[str], template: str) -> list[np.ndarray]:
    """Prompts in the template, tokenised with the tokenizer's special tokens (BOS), no EOS: int32 arrays."""
    if not prompts:
        return []
    encoded = tokenizer([format_prompt(p, template) for p in prompts], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [np.asarray(ids[:-1] if ids and ids[-1] == eos else ids, dtype=np.int32) for ids in encoded]


def encode_sft(
    tokenizer: Any, prompts: list[str], responses: list[str], template: str, max_length: int
) -> tuple[list[tuple[np.ndarray, int] | None], int]:
    """``(ids, prompt_length)`` per (prompt, response): prompt ids + response ids + EOS, at most ``max_length``
    tokens (the response cut first); ``None`` where the prompt alone leaves no room. Returns the list and how many
    responses were cut."""
    prompt_ids = encode_prompts(tokenizer, prompts, template)
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    eos, out, cut = tokenizer.eos_token_id, [], 0
    for p, r in zip(prompt_ids, response_ids):
        room = max_length - 1 - len(p)
        if room < 1:
            out.append(None)
            continue
        if r and r[-1] == eos:
            r = r[:-1]
        if len(r) > room:
            r, cut = r[:room], cut + 1
        out.append((np.concatenate([p, np.asarray([*r, eos], dtype=np.int32)]), len(p)))
    return out, cut


class SFTView:
    """(prompt, response) items for supervised fine-tuning, prompt tokens masked in the loss.

    Args:
        responses: lists the (prompt, response) pairs a valid row contributes (e.g. both responses of a
            PKU-SafeRLHF row, or only the better one); identical pairs are kept once (``duplicate_response``).
    """

    name = "sft"

    def __init__(self, responses: Callable[[dict[str, Any]], list[tuple[str, str]]]) -> None:
        self.responses = responses

    def encode(self, rows: list[tuple[int, dict[str, Any]]], tokenizer: Any, template: str, max_length: int,
               report: SplitReport) -> Iterator[dict[str, Any]]:
        seen: set[tuple[str, str]] = set()
        kept: list[tuple[int, str, str]] = []
        for index, row in rows:
            for prompt, response in self.responses(row):
                if (prompt, response) in seen:
                    report.dropped["duplicate_response"] += 1
                    continue
                seen.add((prompt, response))
                kept.append((index, prompt, response))
        for start in range(0, len(kept), ENCODE_CHUNK):
            chunk = kept[start : start + ENCODE_CHUNK]
            encoded, cut = encode_sft(tokenizer, [c[1] for c in chunk], [c[2] for c in chunk], template, max_length)
            report.notes["truncated_sequences"] += cut
            for (index, _, _), item in zip(chunk, encoded):
                if item is None:
                    report.dropped["prompt_too_long"] += 1
                    continue
                report.kept += 1
                yield {"input_ids": item[0], "prompt_length": item[1], "row": index}

    def encode_inputs(self, tokenizer: Any, prompts: list[str], responses: list[str], template: str,
                      max_length: int) -> tuple[list[np.ndarray], int]:
        """Token ids of (prompt, response) texts as the policy sees them (for ``predict_file``)."""
        encoded, cut = encode_sft(tokenizer, prompts, responses, template, max_length)
        if any(e is None for e in encoded):
            raise ValueError(f"a prompt leaves no room for a response within max_length {max_length}")
        return [e[0] for e in encoded], cut

    @staticmethod
    def length(item: dict[str, Any]) -> int:
        return len(item["input_ids"])

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        import torch

        ids, mask = pad_right([i["input_ids"] for i in items], pad_id, multiple_of)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        for row, item in enumerate(items):
            labels[row, : int(item["prompt_length"])] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "row": torch.as_tensor([int(i["row"]) for i in items])}


class PromptView:
    """Distinct prompts in the template, for generation (left padding)."""

    name = "prompts"

    def encode(self, rows: list[tuple[int, dict[str, Any]]], tokenizer: Any, template: str, max_length: int,
               report: SplitReport) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        kept: list[tuple[int, str]] = []
        for index, row in rows:
            if row["prompt"] in seen:
                report.dropped["duplicate_prompt"] += 1
                continue
            seen.add(row["prompt"])
            kept.append((index, row["prompt"]))
        for start in range(0, len(kept), ENCODE_CHUNK):
            chunk = kept[start : start + ENCODE_CHUNK]
            for (index, _), ids in zip(chunk, encode_prompts(tokenizer, [c[1] for c in chunk], template)):
                if len(ids) >= max_length:  # no room left to generate
                    report.dropped["prompt_too_long"] += 1
                    continue
                report.kept += 1
                yield {"input_ids": ids, "row": index}

    @staticmethod
    def length(item: dict[str, Any]) -> int:
        return len(item["input_ids"])

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        import torch

        ids, mask = pad_left([i["input_ids"] for i in items], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "row": torch.as_tensor([int(i["row"]) for i in items])}


__all__ = ["IGNORE_INDEX", "PromptView", "SFTView", "encode_prompts", "encode_sft"]
