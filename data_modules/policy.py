"""Views for training policies: ``sft`` (supervised fine-tuning on responses), ``prompts`` (prompts to generate
from, for PPO rollouts and the arena) and ``preference_pairs`` (a preferred and a dispreferred response, for DPO).

``sft`` items are ``{"input_ids": int32 (L,), "prompt_length": int, "row": int}``: the prompt in the conversation
template (with the tokenizer's BOS), then the response and EOS; with ``prompt_template: chat``, the prompt rendered by
the tokenizer's chat template with its generation prompt (a row's turns as turns), then the reply as the template
writes it and the template's end-of-turn (:mod:`lit_safe.models.text`). The prompt and the response are tokenised
separately and concatenated, so that the boundary is exact: the loss masks exactly the prompt's tokens
(ALGORITHMS.md section 6), and a policy generating from the ``prompts`` view starts from the very same ids. Batches:
``input_ids``, ``attention_mask`` and ``labels (B, L)`` (right padding; labels are -100 on prompt and padding), and
``row (B,)``. A response longer than the room after its prompt is cut before its end; a prompt that leaves no room
for a response token is dropped and counted (``prompt_too_long``), as are an empty or blank prompt or response
(``empty_prompt``, ``empty_response``) and a (prompt, response) kept before in the split (``duplicate_response``).

``prompts`` items are ``{"input_ids": int32 (P,), "row": int}``, one per distinct prompt (repeats are dropped and
counted as ``duplicate_prompt``, blank prompts as ``empty_prompt``); with ``prompt_template: chat`` also ``"turns"``,
the prompt's ``{"role", "content"}`` turns as JSON. Batches: ``input_ids`` and ``attention_mask (B, P)``
*left*-padded, as generation needs, and ``row (B,)``; under ``chat`` also ``prompt_turns`` (a list of B lists of
turns), so that a score model with another tokenizer can read the conversation in its own chat template.

``preference_pairs`` items (DPO) are ``{"chosen": int32 (Lc,), "rejected": int32 (Lr,), "prompt_length": int,
"row": int}``: two ``sft`` sequences of the same prompt (identical prompt tokens), the preferred response first.
Batches: ``input_ids``, ``attention_mask`` and ``labels (2B, L)``, the B chosen sequences then the B rejected ones
(labels -100 on prompt and padding), and ``row (B,)``. Pairs with identical responses are dropped and counted
(``identical_responses``, or ``identical_after_truncation`` when cutting made them equal), as are prompts that leave no
room (``prompt_too_long``), blank texts (``empty_prompt``, ``empty_response``) and a (prompt, chosen, rejected) kept
before in the split (``duplicate_pair``); cut responses are counted in ``truncated_sequences``.

Every view notes rows repeated whole within a split (``duplicate_rows``,
:func:`~lit_safe.data_modules.views.count_duplicate_rows`). Repeats are found by 16-byte digests, so that the state
stays small when preparation streams.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import is_blank, text_digest
from lit_safe.data_modules.views import Unit, Units, View, blank_text, int_fields, row_text, text_batch
from lit_safe.models.text import Text, chat_turns, encode_prompt_response, encode_prompts, is_chat, pad_left

IGNORE_INDEX = -100
ENCODE_CHUNK = 8192


def encode_sft(
    tokenizer: Any, prompts: list[Text], responses: list[Text], template: str, max_length: int
) -> tuple[list[tuple[np.ndarray, int] | None], int]:
    """``(ids, prompt_length)`` per (prompt, response): prompt ids + response ids + end ids (EOS; for ``chat`` the
    template's end-of-turn), at most ``max_length`` tokens (the response cut first); ``None`` where the prompt alone
    leaves no room. The parts are tokenised separately (:func:`~lit_safe.models.text.encode_prompt_response`), so
    the first ``prompt_length`` ids are exactly the ``prompts`` view's. Returns the list and how many responses were
    cut."""
    if not prompts:
        return [], 0
    prompt_ids, response_ids, end = encode_prompt_response(tokenizer, prompts, responses, template)
    out, cut = [], 0
    for p, r in zip(prompt_ids, response_ids):
        room = max_length - len(end) - len(p)
        if room < 1:
            out.append(None)
            continue
        if len(r) > room:
            r, cut = r[:room], cut + 1
        out.append((np.concatenate([p, np.asarray([*r, *end], dtype=np.int32)]), len(p)))
    return out, cut


def labelled_batch(sequences: list[np.ndarray], prompt_lengths: list[int], pad_id: int,
                   multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels (N, L)`` of right-padded sequences, the labels -100 on each
    sequence's first ``prompt_lengths`` tokens and on padding (the loss reads the responses only)."""
    batch = text_batch(sequences, pad_id, multiple_of)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    for row, prompt_length in enumerate(prompt_lengths):
        labels[row, :prompt_length] = IGNORE_INDEX
    return {**batch, "labels": labels}


class PolicyView(View):
    """What the policy views share: a (prompt, response) reads as :func:`encode_sft` tokenises it."""

    def encode_inputs(self, tokenizer: Any, prompts: list[str], responses: list[str], template: str,
                      max_length: int) -> tuple[list[np.ndarray], int]:
        """Token ids of (prompt, response) texts as the policy sees them (for ``predict_file``)."""
        encoded, cut = encode_sft(tokenizer, prompts, responses, template, max_length)
        if any(e is None for e in encoded):
            raise ValueError(f"a prompt leaves no room for a response within max_length {max_length}")
        return [e[0] for e in encoded], cut


class SFTView(PolicyView):
    """(prompt, response) items for supervised fine-tuning, prompt tokens masked in the loss.

    Args:
        responses: lists the (prompt, response) pairs a valid row contributes (e.g. both responses of a
            PKU-SafeRLHF row, or only the better one); identical pairs are kept once (``duplicate_response``).
    """

    name = "sft"
    repeat_reason = "duplicate_response"

    def __init__(self, responses: Callable[[dict[str, Any]], list[tuple[str, str]]]) -> None:
        self.responses = responses

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The row's (prompt, response) pairs with text, each found again by the digest of the pair."""
        units: list[Unit] = []
        for prompt, response in self.responses(row):
            blank = blank_text(prompt, response)
            if blank:
                report.dropped[blank] += 1
                continue
            units.append((text_digest(prompt, response), (prompt, response)))
        return units

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        for start in range(0, len(units), ENCODE_CHUNK):
            chunk = units[start : start + ENCODE_CHUNK]
            encoded, cut = encode_sft(tokenizer, [v[0] for _, _, v in chunk], [v[1] for _, _, v in chunk], template,
                                      max_length)
            report.notes["truncated_sequences"] += cut
            for (position, _, _), item in zip(chunk, encoded):
                if item is None:
                    report.dropped["prompt_too_long"] += 1
                    continue
                report.kept += 1
                yield {"input_ids": item[0], "prompt_length": item[1], "row": position}

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        batch = labelled_batch([i["input_ids"] for i in items], [int(i["prompt_length"]) for i in items], pad_id,
                               multiple_of)
        return {**batch, **int_fields(items, ["row"])}


class PromptView(PolicyView):
    """Distinct prompts in the template, for generation (left padding).

    Args:
        field: the row field holding the user prompt (SafeSora: ``prompt_text``).
        prompt: the prompt a valid row gives, when it is more than its ``field`` (SafeSora under a chat template:
            the rewrite instruction around it); default the field (with its turns, :func:`row_text`).
    """

    name = "prompts"
    repeat_reason = "duplicate_prompt"

    def __init__(self, field: str = "prompt", prompt: Callable[[dict[str, Any]], Text] | None = None) -> None:
        self.field = field
        self.prompt = prompt

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The row's prompt, found again by the digest of its text; none when blank (counted)."""
        text = row[self.field]
        if is_blank(text):
            report.dropped["empty_prompt"] += 1
            return []
        return [(text_digest(text), self.prompt(row) if self.prompt is not None else row_text(row, self.field))]

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        chat = is_chat(template)
        for start in range(0, len(units), ENCODE_CHUNK):
            chunk = units[start : start + ENCODE_CHUNK]
            for (position, _, prompt), ids in zip(chunk, encode_prompts(tokenizer, [v for _, _, v in chunk],
                                                                        template)):
                if len(ids) >= max_length:  # no room left to generate
                    report.dropped["prompt_too_long"] += 1
                    continue
                report.kept += 1
                if chat:  # the turns, for a scorer that renders them with its own chat template
                    yield {"input_ids": ids, "row": position, "turns": json.dumps(chat_turns(prompt, "user"))}
                else:
                    yield {"input_ids": ids, "row": position}

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        ids, mask = pad_left([i["input_ids"] for i in items], pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, **int_fields(items, ["row"])}
        if "turns" in items[0]:
            batch["prompt_turns"] = [json.loads(i["turns"]) for i in items]
        return batch


class PreferencePairView(PolicyView):
    """(prompt, chosen, rejected) items for DPO: both responses after the same prompt tokens, labels on the responses.

    Args:
        pairs: lists the (prompt, chosen response, rejected response) triples a valid row contributes (e.g. for
            SafeSora, the user prompt with the winning and the losing video's rewritten prompt).
    """

    name = "preference_pairs"
    repeat_reason = "duplicate_pair"

    def __init__(self, pairs: Callable[[dict[str, Any]], list[tuple[str, str, str]]]) -> None:
        self.pairs = pairs

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The row's (prompt, chosen, rejected) triples with text and two different responses, each found again by
        the digest of the triple."""
        units: list[Unit] = []
        for prompt, chosen, rejected in self.pairs(row):
            blank = blank_text(prompt, chosen, rejected)
            if blank:
                report.dropped[blank] += 1
                continue
            if chosen == rejected:
                report.dropped["identical_responses"] += 1
                continue
            units.append((text_digest(prompt, chosen, rejected), (prompt, chosen, rejected)))
        return units

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        for start in range(0, len(units), ENCODE_CHUNK):
            chunk = units[start : start + ENCODE_CHUNK]
            prompts = [v[0] for _, _, v in chunk]
            encoded, cut = encode_sft(tokenizer, prompts + prompts, [v[1] for _, _, v in chunk]
                                      + [v[2] for _, _, v in chunk], template, max_length)
            report.notes["truncated_sequences"] += cut
            for (position, _, _), chosen, rejected in zip(chunk, encoded[: len(chunk)], encoded[len(chunk) :]):
                if chosen is None or rejected is None:  # the same prompt: both or neither
                    report.dropped["prompt_too_long"] += 1
                    continue
                if np.array_equal(chosen[0], rejected[0]):
                    report.dropped["identical_after_truncation"] += 1
                    continue
                report.kept += 1
                yield {"chosen": chosen[0], "rejected": rejected[0], "prompt_length": chosen[1], "row": position}

    @staticmethod
    def length(item: dict[str, Any]) -> int:
        """Padded length the pair costs in a batch (what length grouping sorts by)."""
        return max(len(item["chosen"]), len(item["rejected"]))

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        sequences = [i["chosen"] for i in items] + [i["rejected"] for i in items]
        batch = labelled_batch(sequences, [int(i["prompt_length"]) for i in items + items], pad_id, multiple_of)
        return {**batch, **int_fields(items, ["row"])}


__all__ = ["IGNORE_INDEX", "PolicyView", "PreferencePairView", "PromptView", "SFTView", "encode_sft", "labelled_batch"]
