"""The view interface: how a DataModule turns validated rows into stored items, and stored items into batches.

A dataset offers one or more views of its rows (PKU-SafeRLHF: ``preference``, ``safety``, ``moderation``, ``sft``,
``prompts``); the configured one encodes every split during preparation and collates the streamed items into
batches (:class:`~lit_safe.data_modules.base.PreparedDataModule`). Every view is a :class:`View`:

- ``name``;
- ``units(row, report)``: the units one valid row contributes (a pair, each labelled response, a prompt), each with
  the 16-byte digest by which a repeat is found (``None``: never a repeat), counting in ``report`` what the row's own
  checks drop (a blank text, identical responses...); ``repeat_reason`` is the drop reason of a unit whose digest an
  earlier unit of the split had (``duplicate_pair``...);
- ``encode_units(units, tokenizer, template, max_length, report)``: the items of the units that are no repeats,
  counting what is kept, dropped after tokenising (``prompt_too_long``...) and noted (``truncated_sequences``);
  ``template`` is a ``{prompt}`` template or ``chat`` (the tokenizer's chat template), applied by the functions of
  :mod:`lit_safe.models.text`;
- ``encode(rows, tokenizer, template, max_length, report)``: all of one split's valid rows at once (rows repeated
  whole noted, units, repeats dropped, :meth:`~View.encode_units`), for a split held in memory;
- ``length(item)``: the tokens an item costs in a batch (what length grouping sorts by);
- ``collate(items, pad_id, multiple_of)``: a batch of tensors;
- ``encode_inputs(tokenizer, prompts, responses, template, max_length)``: how one (prompt, response) is tokenised,
  for ``predict_file``;
- ``label_summary()``: label counts of the units encoded last (``None`` for views that record none), integers and
  lists of integers, so that preparation sums those of its blocks into the split's summary saved in ``meta.json``
  (except the keys in ``label_settings``, which describe the labels: equal in every block).

Why units and not a whole split: preparation streams (:mod:`~lit_safe.data_modules.preparation`). A first pass
reads every row, checks it and keeps only digests; the split's repeats are then known (the first unit of each digest
is kept); a second pass encodes blocks of rows in worker processes, each block's units less its repeats, and writes
the items in row order. Everything a view decides per unit is local to its row, so the items and the report do not
depend on how the rows were cut into blocks nor on how many workers encoded them.

The helpers below are what views share: :func:`count_duplicate_rows` (the ``duplicate_rows`` note every view
keeps), :func:`blank_text` (the drop reason of an empty text), :func:`row_text` (a text field with the turns a chat
template renders), :func:`text_batch` and :func:`int_fields` (the common parts of a batch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import is_blank, row_digest
from lit_safe.models.text import Turns, pad_right

Valid = tuple[int, dict[str, Any]]  # (position of the row in its source split, counted from 0; the row)
Unit = tuple[bytes | None, Any]  # (digest that finds a repeat, or None; what encode_units reads)
Units = list[tuple[int, int, Any]]  # (position of the row, number of the unit in its row, the unit's value)


class View(ABC):
    """Rows -> units -> items -> batches, for one kind of training example (see the module docstring)."""

    name = "view"
    repeat_reason = "duplicate"  # the drop reason of a unit whose digest an earlier unit of the split had
    label_settings: tuple[str, ...] = ()  # label_summary keys that describe the labels (not counts: never summed)

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The units one valid row contributes, in order, each ``(digest, value)``: ``digest`` (16 bytes) finds a
        repeat of an earlier unit of the split (``None``: never a repeat); ``value`` is what :meth:`encode_units`
        reads. What the row's own checks drop is counted in ``report``. Default: the row itself, never a repeat."""
        return [(None, row)]

    @abstractmethod
    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int,
                     report: SplitReport) -> Iterator[dict[str, Any]]:
        """The items of ``units`` (no repeats among them), in order; what is kept, dropped and noted is counted in
        ``report``.

        Args:
            units: ``(position of the row in its source split, number of the unit in its row, value)``.
            tokenizer: the model's tokenizer.
            template: the prompt template (contains ``{prompt}``), or ``chat`` (the tokenizer's chat template).
            max_length: longest token sequence.
            report: the split's counts.
        """

    def encode(self, rows: list[Valid], tokenizer: Any, template: str, max_length: int,
               report: SplitReport) -> Iterator[dict[str, Any]]:
        """The items of one split's valid rows, all at once (a split held in memory; preparation streams blocks
        instead, with the same result): rows repeated whole are noted, each row's :meth:`units` taken, repeats
        dropped (counted as :attr:`repeat_reason`), the rest encoded by :meth:`encode_units`.

        Args:
            rows: ``(position in the source split, row)`` of the split's valid rows.
            tokenizer: the model's tokenizer.
            template: the prompt template (contains ``{prompt}``), or ``chat`` (the tokenizer's chat template).
            max_length: longest token sequence.
            report: the split's counts.
        """
        seen: set[bytes] = set()
        kept: Units = []
        for position, row in count_duplicate_rows(rows, report):
            for number, (digest, value) in enumerate(self.units(row, report)):
                if digest is not None:
                    if digest in seen:
                        report.dropped[self.repeat_reason] += 1
                        continue
                    seen.add(digest)
                kept.append((position, number, value))
        yield from self.encode_units(kept, tokenizer, template, max_length, report)

    @abstractmethod
    def collate(self, items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        """A batch of tensors from streamed items; padded lengths round up to ``multiple_of``."""

    @abstractmethod
    def encode_inputs(self, tokenizer: Any, prompts: list[str], responses: list[str], template: str,
                      max_length: int) -> tuple[list[np.ndarray], int]:
        """Token ids of single (prompt, response) texts as this view's model reads them (for ``predict_file``):
        ``(int32 ids per text, how many were cut)``."""

    def length(self, item: dict[str, Any]) -> int:
        """Tokens the item costs in a batch (what length grouping sorts by): its ``input_ids``."""
        return len(item["input_ids"])

    def label_summary(self) -> dict[str, Any] | None:
        """Label counts of the units encoded last (integers, and lists of integers counted element by element;
        preparation sums them over blocks into the split's summary in ``meta.json``), or ``None`` when the view
        records none."""
        return None


def count_duplicate_rows(rows: Iterable[Valid], report: SplitReport) -> Iterator[Valid]:
    """Yield ``rows`` unchanged, counting in the note ``duplicate_rows`` every row equal (in every field) to an earlier
    row of the split. Views drop repeats where they would bias training (``duplicate_pair``, ``duplicate_response``,
    ``duplicate_prompt``); this note tells how many whole rows the source repeats. State: one 16-byte digest per
    distinct row."""
    seen: set[bytes] = set()
    for index, row in rows:
        key = row_digest(row)
        if key in seen:
            report.notes["duplicate_rows"] += 1
        else:
            seen.add(key)
        yield index, row


def blank_text(prompt: str, *responses: str) -> str | None:
    """The drop reason of a (prompt, responses) with nothing to learn from: ``empty_prompt`` or ``empty_response``
    (empty or whitespace only); ``None`` when every text has content."""
    if is_blank(prompt):
        return "empty_prompt"
    if any(is_blank(response) for response in responses):
        return "empty_response"
    return None


def row_text(row: dict[str, Any], field: str) -> str:
    """A row's text ``field`` (``prompt``, ``response_0`` ...) as the views read it: the string, carrying the row's
    ``{field}_messages`` turns (:class:`~lit_safe.models.text.Turns`) when it has them, which a chat template renders
    instead (rows of the chosen/rejected formats, :mod:`lit_safe.data_modules.formats`)."""
    messages = row.get(f"{field}_messages")
    return Turns(row[field], messages) if messages else row[field]


def text_batch(sequences: Sequence[np.ndarray], pad_id: int, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``(N, L)`` of right-padded sequences (``L`` a multiple of
    ``multiple_of``)."""
    ids, mask = pad_right(list(sequences), pad_id, multiple_of)
    return {"input_ids": ids, "attention_mask": mask}


def int_fields(items: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The integer fields ``keys`` of the items, each as a ``(B,)`` tensor."""
    return {key: torch.as_tensor([int(i[key]) for i in items]) for key in keys}


__all__ = ["Unit", "Units", "Valid", "View", "blank_text", "count_duplicate_rows", "int_fields", "row_text",
           "text_batch"]
