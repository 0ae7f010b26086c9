"""The ``moderation`` view: one item per (prompt, response) with its harm categories, severity and safety label.

Moderation classifies responses, not pairs (ALGORITHMS.md section 5). A dataset gives the view a function that
lists the labelled responses of a row (:func:`pku_responses`: two per PKU-SafeRLHF row, 19 categories and
severity 0-3; :func:`beavertails_responses`: one per BeaverTails row, 14 categories, no severity).

Items: ``{"input_ids": int32 (L,), "categories": uint8 (C,), "unsafe": 0|1, "severity": int (-1 when the data has
none), "row": position of the row in its source split, "response": which response of the row (0 or 1)}``.
Batches: ``input_ids``/``attention_mask (B, L)`` (right padding), ``categories`` float ``(B, C)``, ``unsafe``,
``severity``, ``row`` and ``response`` ``(B,)``.

Text: decoder LMs read the conversation as the score models do (:func:`~lit_safe.models.text.encode_conversations`:
the prompt in the template, the response and EOS; with ``prompt_template: chat`` the tokenizer's chat template and its
end-of-turn). Encoders (a
tokenizer with CLS and SEP tokens, e.g. BERT or MiniLM) read the tokenizer's own sentence-pair ids
(``[CLS] prompt [SEP] response [SEP]``), the longer of the two cut first when too long. Departure: no
``token_type_ids`` are stored, so the model sees segment 0 throughout, as sentence-transformer encoders (MiniLM) were
trained; cross-encoders pretrained with segment ids lose that signal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import text_digest
from lit_safe.data_modules.views import Unit, Units, View, blank_text, int_fields, row_text, text_batch
from lit_safe.models.text import encode_conversations

ENCODE_CHUNK = 8192  # responses tokenised per call
# (prompt, response, {category: bool}, is_safe, severity or None, sha256 or None) per labelled response
Response = tuple[str, str, dict[str, bool], bool, int | None, str | None]


def pku_responses(row: dict[str, Any]) -> list[Response] | None:
    """The two labelled responses of a PKU-SafeRLHF row, or ``None`` when the row lacks the per-response harm
    labels (the 2023 ``v0`` release has only ``is_response_k_safe``)."""
    if any(row.get(f"response_{k}_harm_category") is None for k in (0, 1)):
        return None
    return [
        (row_text(row, "prompt"), row_text(row, f"response_{k}"), row[f"response_{k}_harm_category"],
         row[f"is_response_{k}_safe"], row.get(f"response_{k}_severity_level"), row.get(f"response_{k}_sha256"))
        for k in (0, 1)
    ]


def beavertails_responses(row: dict[str, Any]) -> list[Response]:
    """The one labelled response of a BeaverTails row."""
    return [(row["prompt"], row["response"], row["category"], row["is_safe"], None, None)]


def uses_pair_input(tokenizer: Any) -> bool:
    """Whether a tokenizer is an encoder's (it has CLS and SEP tokens), which reads (prompt, response) as a pair."""
    return getattr(tokenizer, "cls_token_id", None) is not None and getattr(tokenizer, "sep_token_id", None) is not None


def encode_sentence_pairs(
    tokenizer: Any, prompts: list[str], responses: list[str], max_length: int
) -> tuple[list[np.ndarray], int]:
    """Encode (prompt, response) as the tokenizer's sentence pair with its special tokens, at most ``max_length``
    tokens (the longer text cut first). Returns ``(int32 ids per pair, how many were cut)``."""
    full = tokenizer(prompts, responses, add_special_tokens=True, verbose=False)["input_ids"]
    too_long = [i for i, ids in enumerate(full) if len(ids) > max_length]
    if too_long:
        cut = tokenizer([prompts[i] for i in too_long], [responses[i] for i in too_long], add_special_tokens=True,
                        truncation="longest_first", max_length=max_length)["input_ids"]
        for i, ids in zip(too_long, cut):
            full[i] = ids
    return [np.asarray(ids, dtype=np.int32) for ids in full], len(too_long)


class ModerationView(View):
    """Per-response items for a moderation classifier.

    Args:
        categories: the dataset's harm categories, in label order (keys are kept whole: BeaverTails' contain commas).
        responses: lists the labelled responses of a valid row (``None``: the row has no moderation labels; it is
            dropped and counted as ``no_moderation_labels``).
        severity_levels: number of severity classes (4 for PKU-SafeRLHF: 0 safe, 1 minor, 2 moderate, 3 severe);
            0 when the data has no severity.
        dedup: keep one item per distinct response (by ``response_k_sha256`` when given, else by a digest of the
            texts): a PKU-SafeRLHF response recurs across rows; repeats are dropped and counted as
            ``duplicate_response``. Either way, rows repeated whole are noted (``duplicate_rows``), and a response
            with an empty or blank prompt or text is dropped and counted (``empty_prompt``, ``empty_response``).
        pair_input: encode as a sentence pair (encoders, whatever the template) instead of the conversation
            (decoders).
    """

    name = "moderation"
    repeat_reason = "duplicate_response"
    label_settings = ("categories", "severity_levels")

    def __init__(
        self,
        categories: tuple[str, ...],
        responses: Callable[[dict[str, Any]], list[Response] | None],
        severity_levels: int = 0,
        dedup: bool = False,
        pair_input: bool = False,
    ) -> None:
        self.categories = tuple(categories)
        self.responses = responses
        self.severity_levels = severity_levels
        self.dedup = dedup
        self.pair_input = pair_input
        self._counts: dict[str, Any] = {}

    def encode_inputs(self, tokenizer: Any, prompts: list[str], responses: list[str], template: str, max_length: int):
        """Tokenise (prompt, response) texts: ``(int32 ids per text, how many were cut)``."""
        if self.pair_input:
            return encode_sentence_pairs(tokenizer, prompts, responses, max_length)
        return encode_conversations(tokenizer, prompts, responses, template, max_length)

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The row's labelled responses with text, each found again (``dedup``) by its ``response_k_sha256`` when the
        row gives one, else by the digest of its texts."""
        listed = self.responses(row)
        if listed is None:
            report.dropped["no_moderation_labels"] += 1
            return []
        units: list[Unit] = []
        for k, response in enumerate(listed):
            prompt, text, _, _, _, sha256 = response
            blank = blank_text(prompt, text)
            if blank:
                report.dropped[blank] += 1
                continue
            key = None
            if self.dedup:  # a given sha256 and a digest of texts never match each other (three texts vs two)
                key = text_digest("sha256", "", sha256) if sha256 else text_digest(prompt, text)
            units.append((key, (k, response)))
        return units

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        positives, severities = Counter(), Counter()
        unsafe_count = 0
        # Tokenised in chunks, so that a split held in memory never holds every encoding at once. No units (e.g. only
        # 2023 rows) means no tokenizer call (it fails on an empty batch); the writer then reports the empty split.
        for start in range(0, len(units), ENCODE_CHUNK):
            chunk = units[start : start + ENCODE_CHUNK]
            ids, truncated = self.encode_inputs(tokenizer, [v[1][0] for _, _, v in chunk],
                                                [v[1][1] for _, _, v in chunk], template, max_length)
            report.notes["truncated_sequences"] += truncated
            for (position, _, (k, (_, _, categories, is_safe, severity, _))), seq in zip(chunk, ids):
                labels = np.asarray([bool(categories[c]) for c in self.categories], dtype=np.uint8)
                positives.update(c for c, v in zip(self.categories, labels) if v)
                unsafe_count += not is_safe
                if severity is not None:
                    severities[int(severity)] += 1
                report.kept += 1
                yield {
                    "input_ids": seq,
                    "categories": labels,
                    "unsafe": int(not is_safe),
                    "severity": -1 if severity is None or not self.severity_levels else int(severity),
                    "row": position,
                    "response": k,
                }
        self._counts = {
            "items": len(units),
            "unsafe": unsafe_count,
            "categories": list(self.categories),
            "category_positives": [positives[c] for c in self.categories],
            "severity_levels": self.severity_levels,
            "severity_counts": [severities[s] for s in range(self.severity_levels)],
        }

    def label_summary(self) -> dict[str, Any]:
        """Label counts of the split encoded last (saved in ``meta.json``; the moderation module derives the
        per-class ``pos_weight`` from the training split's)."""
        return dict(self._counts)

    @staticmethod
    def collate(items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        return {
            **text_batch([i["input_ids"] for i in items], pad_id, multiple_of),
            "categories": torch.as_tensor(np.stack([i["categories"] for i in items]), dtype=torch.float32),
            **int_fields(items, ("unsafe", "severity", "row", "response")),
        }


__all__ = ["ModerationView", "beavertails_responses", "encode_sentence_pairs", "pku_responses", "uses_pair_input"]
