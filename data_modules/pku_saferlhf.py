"""PKU-SafeRLHF as a LightningDataModule: validate -> tokenise -> litdata chunks -> length-grouped streaming.

Reads the 2024 dual-preference release (16 fields) and the 2023 ``v0`` release (its 7-field subset) from the hub
(pinned ``revision`` and config), from local JSON/JSONL/parquet files or directories of split files, from an
already prepared litdata directory (local or an object-store URL such as ``s3://bucket/prepared``), or from the
project's synthetic generator (the embedded default, no network). See ``../shared/docs/DATA.md``.

Other preference files read the same way (``format``, detected by default, and ``columns`` to map a file's own
column names; :mod:`lit_safe.data_modules.formats`): TRL explicit-prompt rows (``prompt``, ``chosen``, ``rejected``),
TRL conversational rows (lists of ``{"role", "content"}`` messages, with or without a separate prompt) and Anthropic
HH transcripts. Each row is normalised to the PKU-SafeRLHF pair (chosen = ``response_0``, ``better_response_id`` 0,
optional safety labels under their PKU names, the turns in ``prompt_messages``), so the views below read every
format alike (with ``prompt_template: chat`` the tokenizer's chat template renders those turns as turns); safety
labels are required only by the views that read them (``safety``, ``moderation``, and ``sft`` with ``sft_responses:
safer``), and a source without them fails for those views with one error before anything is prepared. A
PKU-SafeRLHF file without safety labels (e.g. ``PKU-SafeRLHF-single-dimension``) trains a reward model.

Views turn a validated row into training items:

- ``preference``: (better, worse) by ``better_response_id``: the helpfulness reward model (Safe RLHF).
- ``safety``: (less safe, safer) by ``safer_response_id`` with a cost sign per response from
  ``is_response_k_safe``: the cost model (self-contradicting rows are dropped and counted).
- ``moderation``: one item per distinct response (deduplicated by ``response_k_sha256``) with its 19 harm
  categories, severity 0-3 and ``is_safe``: the moderation model (:mod:`lit_safe.data_modules.moderation_view`).
- ``sft``: (prompt, response) for supervised fine-tuning of the initial policy, prompt tokens masked; which
  responses is ``sft_responses`` (:mod:`lit_safe.data_modules.policy`).
- ``prompts``: the distinct prompts, left-padded, for PPO rollouts and the arena.
- ``preference_pairs``: (prompt, better, worse) with labels on the responses, for DPO
  (:class:`~lit_safe.data_modules.policy.PreferencePairView`).

The generic machinery (sources, validation, split carving, preparation, streaming, ``predict_file``) is in
:class:`~lit_safe.data_modules.base.PreparedDataModule`.

Preparation validates every row before anything is written: a missing field, a wrong type or an out-of-range label
is an error naming the file, row and field (or, with ``on_bad_row: skip``, a counted drop); rows a view cannot use
(an empty prompt, a blank response, identical responses, a pair repeated with the same labels) are dropped and
counted; label disagreements the real data has in a few rows, and rows repeated whole (``duplicate_rows``), are
counted as notes. The report (rows read, kept, dropped by reason) is printed and saved as ``report.json``.
Splits are the dataset's own, or carved from the training split by a seeded hash of the *prompt*, so that
held-out pairs never share a prompt with training pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from lit_safe.data_modules.base import PreparedDataModule, prompt_bucket
from lit_safe.data_modules.formats import (
    FORMATS,
    LabelNeeds,
    check_columns,
    column_of,
    detect_format,
    label_needs,
    map_columns,
    missing_labels,
    normalise_row,
)
from lit_safe.data_modules.moderation_view import ModerationView, pku_responses, uses_pair_input
from lit_safe.data_modules.policy import PreferencePairView, PromptView, SFTView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import (
    PKU_HARM_CATEGORIES,
    PKU_SEVERITY_LEVELS,
    pku_label_notes,
    text_digest,
)
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.views import Unit, Units, View, blank_text, int_fields, row_text, text_batch
from lit_safe.models.text import (
    encode_conversations,
    pack_pair,
    pad_right,
    pair_attention,
    shared_prefix_length,
)


class PairView(View):
    """Two responses to one prompt, ordered: ``first`` is the one the score model must score higher.

    Subclasses say which response comes first (:meth:`rank`), under which item keys, and what else each pair
    carries (scalar fields such as safety signs, batched as ``(B,)`` tensors).

    Dropped and counted: ``empty_prompt`` and ``empty_response`` (empty or whitespace only), ``identical_responses``,
    the subclass's own reasons, ``duplicate_pair`` (the same prompt, first and second response and extras as a pair
    kept earlier in the split, in either response order: it would weigh twice in the loss; the same prompt with
    other responses is no repeat) and ``identical_after_truncation``. Rows repeated whole are also noted
    (``duplicate_rows``). Repeats are found by 16-byte digests, not by keeping the texts.

    Items: ``{first: int32 (L1,), second: int32 (L2,), "row": int, **extras}`` where ``row`` is the row's position
    in its source split (0-based, blank lines not counted), so a prediction can be traced back.

    Batches, unpacked: ``input_ids`` and ``attention_mask`` ``(2B, L)``, the B first sequences, then the B second
    ones (one forward pass scores both), ``row (B,)`` and the extras ``(B,)``.
    Packed (``pack_pairs``): one row per pair, the shared prompt computed once (:func:`pack_pair`):
    ``input_ids``, ``position_ids`` and ``attention_mask`` (real tokens) ``(B, L)``, ``pair_attention``
    ``(B, 1, L, L)``, ``end_index (B, 2)`` (first end, second end), ``row (B,)`` and the extras.

    Args:
        pack_pairs: pack each pair into one row.
    """

    name = "pair"
    first, second = "first", "second"
    repeat_reason = "duplicate_pair"

    def __init__(self, pack_pairs: bool = False) -> None:
        self.pack_pairs = pack_pairs

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]] | None:
        """``(id of the first response, extra item fields)``, or ``None`` for a row this view drops (counted)."""
        raise TypeError(f"{type(self).__name__} must say which response comes first")

    def units(self, row: dict[str, Any], report: SplitReport) -> list[Unit]:
        """The row's one pair ``(prompt, first, second, extras)``, found again by the digest of the ordered pair and
        its extras; none for a row this view drops (counted)."""
        blank = blank_text(row["prompt"], row["response_0"], row["response_1"])
        if blank:
            report.dropped[blank] += 1
            return []
        if row["response_0"] == row["response_1"]:
            report.dropped["identical_responses"] += 1
            return []
        ranked = self.rank(row, report)
        if ranked is None:
            return []
        first, extras = ranked
        # The same ordered pair with the same labels again would count twice in the loss: kept once.
        key = text_digest(row["prompt"], row[f"response_{first}"], row[f"response_{1 - first}"],
                          *(f"{name}={value}" for name, value in sorted(extras.items())))
        return [(key, (row_text(row, "prompt"), row_text(row, f"response_{first}"),
                       row_text(row, f"response_{1 - first}"), extras))]

    def encode_units(self, units: Units, tokenizer: Any, template: str, max_length: int, report: SplitReport):
        prompts = [value[0] for _, _, value in units]
        firsts, cut_a = encode_conversations(tokenizer, prompts, [v[1] for _, _, v in units], template, max_length)
        seconds, cut_b = encode_conversations(tokenizer, prompts, [v[2] for _, _, v in units], template, max_length)
        report.notes["truncated_sequences"] += cut_a + cut_b
        for (position, _, (_, _, _, extras)), a, b in zip(units, firsts, seconds):
            if np.array_equal(a, b):
                report.dropped["identical_after_truncation"] += 1
                continue
            report.kept += 1
            yield {self.first: a, self.second: b, "row": position, **extras}

    @staticmethod
    def encode_inputs(tokenizer: Any, prompts: list[str], responses: list[str], template: str, max_length: int):
        """Tokenise single (prompt, response) texts the way pair items are (for ``predict_file``):
        ``(ids, truncated count)``."""
        return encode_conversations(tokenizer, prompts, responses, template, max_length)

    def length(self, item: dict[str, Any]) -> int:
        """Tokens the item costs in a batch (what length grouping sorts by)."""
        a, b = item[self.first], item[self.second]
        if self.pack_pairs:
            return len(a) + len(b) - shared_prefix_length(a, b)
        return max(len(a), len(b))

    def collate(self, items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        extras = int_fields(items, [key for key in items[0] if key not in (self.first, self.second)])
        if not self.pack_pairs:
            return {**text_batch([i[self.first] for i in items] + [i[self.second] for i in items], pad_id,
                                 multiple_of), **extras}
        packed = [pack_pair(i[self.first], i[self.second]) for i in items]
        ids, mask = pad_right([p[0] for p in packed], pad_id, multiple_of)
        positions, _ = pad_right([p[1] for p in packed], 0, multiple_of)
        lengths = [len(p[0]) for p in packed]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "pair_attention": pair_attention(lengths, [p[2] for p in packed], [p[3] for p in packed], ids.size(1)),
            "end_index": torch.as_tensor([[p[3] - 1, n - 1] for p, n in zip(packed, lengths)]),
            **extras,
        }


class PreferenceView(PairView):
    """(better, worse) pairs by ``better_response_id``, for the helpfulness reward model: items ``chosen`` and
    ``rejected``."""

    name = "preference"
    first, second = "chosen", "rejected"

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]]:
        return row["better_response_id"], {}


class SafetyView(PairView):
    """(less safe, safer) pairs by ``safer_response_id``, for the Safe RLHF cost model: items ``unsafer`` and
    ``safer`` (the cost model must give the less safe response the higher cost), with each response's cost sign
    ``unsafer_sign`` / ``safer_sign``: +1 if it is labelled unsafe, -1 if safe (cost > 0 means unsafe).

    Rows whose safer response is labelled unsafe while the other is labelled safe contradict themselves (the
    reference crashed on them mid-epoch): they are dropped and counted as ``safety_label_contradiction``. Rows of the
    other formats whose two responses carry the same safety label and no ``safer`` cannot be ordered: dropped and
    counted as ``safer_unknown``.
    """

    name = "safety"
    first, second = "unsafer", "safer"

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]] | None:
        if "safer_response_id" not in row:  # both responses labelled alike and no `safer` given: no order to learn
            report.dropped["safer_unknown"] += 1
            return None
        safer = row["safer_response_id"]
        safer_is_safe, other_is_safe = row[f"is_response_{safer}_safe"], row[f"is_response_{1 - safer}_safe"]
        if not safer_is_safe and other_is_safe:
            report.dropped["safety_label_contradiction"] += 1
            return None
        return 1 - safer, {"unsafer_sign": -1 if other_is_safe else 1, "safer_sign": -1 if safer_is_safe else 1}


VIEWS = {"preference": PreferenceView, "safety": SafetyView}


def pku_sft_pairs(row: dict[str, Any], which: str) -> list[tuple[str, str]]:
    """The (prompt, response) pairs a PKU-SafeRLHF row gives the ``sft`` view: ``both`` responses, the ``better``
    one or the ``safer`` one."""
    if which == "both":
        ids = [0, 1]
    else:
        ids = [row["better_response_id" if which == "better" else "safer_response_id"]]
    return [(row_text(row, "prompt"), row_text(row, f"response_{k}")) for k in ids]


def pku_preference_pairs(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (prompt, better response, worse response) a PKU-SafeRLHF row gives the ``preference_pairs`` view (DPO)."""
    better = row["better_response_id"]
    return [(row_text(row, "prompt"), row_text(row, f"response_{better}"), row_text(row, f"response_{1 - better}"))]


class PKUSafeRLHFDataModule(PreparedDataModule):
    """PKU-SafeRLHF (or any preference file: PKU-SafeRLHF's schema, TRL explicit-prompt or conversational rows, HH
    transcripts), prepared once with litdata and streamed. The 2023 release of the Safe RLHF paper is
    ``revision: v0`` with ``subset: null``.

    Args:
        source: ``synthetic`` (the embedded default), a hub id (``PKU-Alignment/PKU-SafeRLHF``), a local
            JSON/JSONL/parquet file, a directory of split files (``train.jsonl``, ``test.jsonl``) or a local clone
            of the hub repository, or an already prepared directory / object-store URL.
        view: which items to build from a row: ``preference`` (reward model), ``safety`` (cost model),
            ``moderation`` (one item per distinct response, for the moderation model), ``sft`` (policy fine-tuning),
            ``prompts`` (distinct prompts for generation) or ``preference_pairs`` (DPO).
        subset: the hub config name (``default``, ``alpaca-7b``, ``alpaca2-7b``, ``alpaca3-8b``); ``None`` for
            the 2023 release.
        synthetic_rows: training rows of the synthetic source (its test split has one eighth as many).
        sft_responses: (``sft`` view) which responses of a row to fine-tune on: ``both``, the ``better`` one
            (``better_response_id``; the chosen one of the other formats) or the ``safer`` one
            (``safer_response_id``); ``auto``: ``both`` for ``pku_saferlhf`` rows, ``better`` (the chosen response)
            for the chosen/rejected formats.
        ptx: (``prompts`` view) also stream ``sft`` batches of the same source (``sft_responses``), for the PTX term
            of PPO-Lagrangian: training batches become ``{"prompts": ..., "ptx": ...}``, one of each per step, and
            an epoch ends with the shorter stream.
        format: the rows' format: ``auto`` (detected from the first row whose fields fit one; the report says which),
            ``pku_saferlhf``, ``prompt_chosen_rejected`` (TRL explicit prompt), ``conversational`` (TRL messages) or
            ``hh`` (Anthropic HH transcripts); see :mod:`lit_safe.data_modules.formats`. The synthetic source is
            ``pku_saferlhf``.
        columns: the file's column name for each field it names differently, e.g. ``{prompt: question, chosen:
            answer_good, rejected: answer_bad}``; errors name the file's columns.
        **kwargs: the settings every dataset shares (tokenizer, splits, lengths, batches, preparation), as
            :class:`~lit_safe.data_modules.base.PreparedDataModule` describes them.
    """

    dataset_name = "pku_saferlhf"
    views = ("preference", "safety", "moderation", "sft", "prompts", "preference_pairs")
    has_synthetic = True

    def __init__(
        self,
        source: str = "synthetic",
        view: Literal["preference", "safety", "moderation", "sft", "prompts", "preference_pairs"] = "preference",
        subset: str | None = "default",
        synthetic_rows: int = 4000,
        sft_responses: Literal["auto", "both", "better", "safer"] = "auto",
        ptx: bool = False,
        format: Literal["auto", "pku_saferlhf", "prompt_chosen_rejected", "conversational", "hh"] = "auto",
        columns: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if sft_responses not in ("auto", "both", "better", "safer"):
            raise ValueError(f"sft_responses must be auto, both, better or safer, got {sft_responses!r}")
        if ptx and view != "prompts":
            raise ValueError(f"ptx streams sft batches beside prompts: it needs view 'prompts', not {view!r}")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be auto or one of {list(FORMATS)}, got {format!r}")
        if source == "synthetic" and (format not in ("auto", "pku_saferlhf") or columns):
            raise ValueError(f"the synthetic source writes pku_saferlhf rows: format {format!r} and columns "
                             f"{columns!r} do not apply to it")
        self.declared_format = format
        self.columns = check_columns(columns)
        self.row_format: str | None = format if format != "auto" else None  # the format in use, once inspected
        super().__init__(source=source, view=view, subset=subset, synthetic_rows=synthetic_rows, **kwargs)

    @property
    def sft_responses(self) -> str:
        """Which responses the ``sft`` view fine-tunes on (``sft_responses``, or the format's default)."""
        if self.hparams.sft_responses != "auto":
            return self.hparams.sft_responses
        return "both" if self.row_format in (None, "pku_saferlhf") else "better"

    def label_needs(self) -> LabelNeeds:
        """The labels the configured view reads besides the preference."""
        return label_needs(self.hparams.view, self.sft_responses)

    def make_view(self, name: str) -> View:
        if name == "sft":
            return SFTView(lambda row: pku_sft_pairs(row, self.sft_responses))
        if name == "prompts":
            return PromptView()
        if name == "preference_pairs":
            return PreferencePairView(pku_preference_pairs)
        if name == "moderation":
            return ModerationView(
                PKU_HARM_CATEGORIES, pku_responses, severity_levels=len(PKU_SEVERITY_LEVELS), dedup=True,
                pair_input=uses_pair_input(self.tokenizer),
            )
        return VIEWS[name](pack_pairs=self.hparams.pack_pairs)

    @property
    def ptx_data(self) -> PKUSafeRLHFDataModule | None:
        """The ``sft`` data module of the same source that ``ptx`` streams (``None`` without ``ptx``)."""
        if not self.hparams.ptx:
            return None
        if getattr(self, "_ptx_data", None) is None:
            # the same settings (LightningCLI adds private keys such as _class_path), without predicting from a file
            settings = {k: v for k, v in self.hparams.items()
                        if k not in ("view", "ptx", "predict_file") and not k.startswith("_")}
            self._ptx_data = PKUSafeRLHFDataModule(**settings, view="sft")
        return self._ptx_data

    def prepare(self, force: bool = False):
        if self.ptx_data is not None:
            self.ptx_data.prepare(force=force)
        return super().prepare(force=force)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.ptx_data is not None and not self._predicting_from_file(stage):
            self.ptx_data.setup(stage)

    def train_dataloader(self):
        prompts = super().train_dataloader()
        if self.ptx_data is None:
            return prompts
        from lightning.pytorch.utilities import CombinedLoader

        return CombinedLoader({"prompts": prompts, "ptx": self.ptx_data.train_dataloader()}, mode="min_size")

    def train_batches(self) -> int:
        """Rollout batches per epoch: with ``ptx`` the training loader stops with the shorter of prompts and sft."""
        prompts = super().train_batches()
        return prompts if self.ptx_data is None else min(prompts, self.ptx_data.train_batches())

    def view_settings(self) -> dict[str, Any]:
        # format and columns only when set, and sft_responses auto as both where the rows are surely PKU-SafeRLHF's,
        # so that the preparations of PKU-SafeRLHF sources keep their fingerprint (with format auto the rows decide
        # the format, and the fingerprint covers the source already)
        settings: dict[str, Any] = {}
        if self.hparams.view == "sft":
            sft = self.hparams.sft_responses
            if sft == "auto" and (self.hparams.source == "synthetic" or self.declared_format == "pku_saferlhf"):
                sft = "both"
            settings["sft_responses"] = sft
        if self.declared_format != "auto":
            settings["format"] = self.declared_format
        if self.columns:
            settings["columns"] = self.columns
        return settings

    def inspect_source(self) -> dict[str, Any]:
        """Detect the rows' format (``format: auto``) and check that the source has the labels the view reads:
        a source whose first row has none of them is one error naming the source and the missing fields, raised
        before anything is prepared. Prints (and returns, for ``meta.json``) the format in use."""
        hp = self.hparams
        first: tuple[str, dict[str, Any]] | None = None
        detected = False
        if self._source_kind() == "synthetic":
            self.row_format, how = "pku_saferlhf", "the synthetic source"
        elif self.declared_format == "auto":
            rows = self._read(hp.train_split)
            try:
                self.row_format, where, mapped = detect_format(rows, self.columns, str(hp.source))
            finally:
                rows.close()
            first, how, detected = (where, mapped), f"detected from {where}", True
        else:
            self.row_format, how = self.declared_format, "declared"
        needs = self.label_needs()
        if needs.any_labels and self._source_kind() != "synthetic":
            first = first or self._first_object()
            missing = missing_labels(first[1], self.row_format, needs) if first is not None else []
            if missing:
                view = f"the {hp.view} view" + (" with sft_responses: safer" if hp.view == "sft" else "")
                names = ", ".join(column_of(name, self.columns) for name in missing)
                raise DataValidationError(
                    f"{hp.source}: {view} needs safety labels ({names}) that this source does not have: its first "
                    f"row ({first[0]}) has only {sorted(first[1])} (format {self.row_format}). Add the labels (map "
                    "them with `columns` if they are named differently), or use a view that reads none: preference, "
                    "preference_pairs, sft, prompts."
                )
        print(f"Format: {self.row_format} ({how})")
        return {"row_format": self.row_format, "row_format_detected": detected}

    def _first_object(self) -> tuple[str, dict[str, Any]] | None:
        """``(location, row column-mapped)`` of the first JSON object of the training split, if any."""
        rows = self._read(self.hparams.train_split)
        try:
            for where, row in rows:
                if isinstance(row, dict):
                    return where, map_columns(row, self.columns)
        finally:
            rows.close()
        return None

    def read_row(self, row: Any) -> tuple[Any, list[tuple[str, str]]]:
        """The row normalised from its format (:func:`~lit_safe.data_modules.formats.normalise_row`; a
        ``pku_saferlhf`` row is used as it is), with the problems that name the file's columns."""
        return normalise_row(row, self.row_format or "pku_saferlhf", self.label_needs(), self.columns)

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return self.read_row(row)[1]

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        return pku_label_notes(row)

    def synthetic(self, split: str, num_rows: int, seed: int) -> Iterator[dict[str, Any]]:
        from lit_safe.data_modules.synthetic import iter_pku_saferlhf_rows

        return iter_pku_saferlhf_rows(num_rows, seed=seed)


__all__ = ["PKUSafeRLHFDataModule", "PairView", "PreferenceView", "SafetyView", "VIEWS", "pku_preference_pairs",
           "pku_sft_pairs", "prompt_bucket"]
