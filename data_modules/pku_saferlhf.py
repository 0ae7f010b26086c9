"""PKU-SafeRLHF as a LightningDataModule: validate -> tokenise -> litdata chunks -> length-grouped streaming.

Reads the 2024 dual-preference release (16 fields) and the 2023 ``v0`` release (its 7-field subset) from the hub
(pinned ``revision`` and config), from local JSON/JSONL/parquet files or directories of split files, from an
already prepared litdata directory (local or an object-store URL such as ``s3://bucket/prepared``), or from the
project's synthetic generator (the embedded default, no network). See ``../shared/docs/DATA.md``.

Views turn a validated row into training items:

- ``preference``: (better, worse) by ``better_response_id``: the helpfulness reward model (Safe RLHF).
- ``safety``: (less safe, safer) by ``safer_response_id`` with a cost sign per response from
  ``is_response_k_safe``: the cost model (self-contradicting rows are dropped and counted).
- ``moderation``: one item per distinct response (deduplicated by ``response_k_sha256``) with its 19 harm
  categories, severity 0-3 and ``is_safe``: the moderation model (:mod:`lit_safe.data_modules.moderation_view`).
- ``sft``: (prompt, response) for supervised fine-tuning of the initial policy, prompt tokens masked; which
  responses is ``sft_responses`` (:mod:`lit_safe.data_modules.policy`).
- ``prompts``: the distinct prompts, left-padded, for PPO rollouts and the arena.

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

from typing import Any, Literal

import numpy as np
import torch

from lit_safe.data_modules.base import PreparedDataModule, prompt_bucket
from lit_safe.data_modules.moderation_view import ModerationView, pku_responses, uses_pair_input
from lit_safe.data_modules.policy import PromptView, SFTView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import (
    PKU_HARM_CATEGORIES,
    PKU_SEVERITY_LEVELS,
    check_pku_saferlhf_row,
    pku_label_notes,
    text_digest,
)
from lit_safe.data_modules.views import Valid, View, blank_text, count_duplicate_rows, int_fields, text_batch
from lit_safe.models.text import (
    conversations,
    encode_with_eos,
    format_prompt,
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

    def __init__(self, pack_pairs: bool = False) -> None:
        self.pack_pairs = pack_pairs

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]] | None:
        """``(id of the first response, extra item fields)``, or ``None`` for a row this view drops (counted)."""
        raise TypeError(f"{type(self).__name__} must say which response comes first")

    def encode(self, rows: list[Valid], tokenizer: Any, template: str, max_length: int, report: SplitReport):
        kept: list[tuple[int, str, str, dict[str, int]]] = []
        pairs: set[bytes] = set()  # digests of the (prompt, first, second, extras) kept so far in this split
        for index, row in count_duplicate_rows(rows, report):
            blank = blank_text(row["prompt"], row["response_0"], row["response_1"])
            if blank:
                report.dropped[blank] += 1
                continue
            if row["response_0"] == row["response_1"]:
                report.dropped["identical_responses"] += 1
                continue
            ranked = self.rank(row, report)
            if ranked is None:
                continue
            first, extras = ranked
            # The same ordered pair with the same labels again would count twice in the loss: keep it once.
            key = text_digest(row["prompt"], row[f"response_{first}"], row[f"response_{1 - first}"],
                              *(f"{name}={value}" for name, value in sorted(extras.items())))
            if key in pairs:
                report.dropped["duplicate_pair"] += 1
                continue
            pairs.add(key)
            prompt = format_prompt(row["prompt"], template)
            kept.append((index, prompt + row[f"response_{first}"], prompt + row[f"response_{1 - first}"], extras))
        firsts, cut_a = encode_with_eos(tokenizer, [k[1] for k in kept], max_length)
        seconds, cut_b = encode_with_eos(tokenizer, [k[2] for k in kept], max_length)
        report.notes["truncated_sequences"] += cut_a + cut_b
        for (index, _, _, extras), a, b in zip(kept, firsts, seconds):
            if np.array_equal(a, b):
                report.dropped["identical_after_truncation"] += 1
                continue
            report.kept += 1
            yield {self.first: a, self.second: b, "row": index, **extras}

    @staticmethod
    def encode_inputs(tokenizer: Any, prompts: list[str], responses: list[str], template: str, max_length: int):
        """Tokenise single (prompt, response) texts the way pair items are (for ``predict_file``):
        ``(ids, truncated count)``."""
        return encode_with_eos(tokenizer, conversations(prompts, responses, template), max_length)

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
    reference crashed on them mid-epoch): they are dropped and counted as ``safety_label_contradiction``.
    """

    name = "safety"
    first, second = "unsafer", "safer"

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]] | None:
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
    return [(row["prompt"], row[f"response_{k}"]) for k in ids]


class PKUSafeRLHFDataModule(PreparedDataModule):
    """PKU-SafeRLHF (or any file in its schema), prepared once with litdata and streamed. The 2023 release of the
    Safe RLHF paper is ``revision: v0`` with ``subset: null``.

    Args:
        source: ``synthetic`` (the embedded default), a hub id (``PKU-Alignment/PKU-SafeRLHF``), a local
            JSON/JSONL/parquet file, a directory of split files (``train.jsonl``, ``test.jsonl``) or a local clone
            of the hub repository, or an already prepared directory / object-store URL.
        view: which items to build from a row: ``preference`` (reward model), ``safety`` (cost model),
            ``moderation`` (one item per distinct response, for the moderation model), ``sft`` (policy fine-tuning)
            or ``prompts`` (distinct prompts for generation).
        subset: the hub config name (``default``, ``alpaca-7b``, ``alpaca2-7b``, ``alpaca3-8b``); ``None`` for
            the 2023 release.
        synthetic_rows: training rows of the synthetic source (its test split has one eighth as many).
        sft_responses: (``sft`` view) which responses of a row to fine-tune on: ``both``, the ``better`` one
            (``better_response_id``) or the ``safer`` one (``safer_response_id``).
        ptx: (``prompts`` view) also stream ``sft`` batches of the same source (``sft_responses``), for the PTX term
            of PPO-Lagrangian: training batches become ``{"prompts": ..., "ptx": ...}``, one of each per step, and
            an epoch ends with the shorter stream.
        **kwargs: the settings every dataset shares (tokenizer, splits, lengths, batches, preparation), as
            :class:`~lit_safe.data_modules.base.PreparedDataModule` describes them.
    """

    dataset_name = "pku_saferlhf"
    views = ("preference", "safety", "moderation", "sft", "prompts")
    has_synthetic = True

    def __init__(
        self,
        source: str = "synthetic",
        view: Literal["preference", "safety", "moderation", "sft", "prompts"] = "preference",
        subset: str | None = "default",
        synthetic_rows: int = 4000,
        sft_responses: Literal["both", "better", "safer"] = "both",
        ptx: bool = False,
        **kwargs: Any,
    ) -> None:
        if sft_responses not in ("both", "better", "safer"):
            raise ValueError(f"sft_responses must be both, better or safer, got {sft_responses!r}")
        if ptx and view != "prompts":
            raise ValueError(f"ptx streams sft batches beside prompts: it needs view 'prompts', not {view!r}")
        self.sft_responses = sft_responses
        super().__init__(source=source, view=view, subset=subset, synthetic_rows=synthetic_rows, **kwargs)

    def make_view(self, name: str) -> View:
        if name == "sft":
            return SFTView(lambda row: pku_sft_pairs(row, self.sft_responses))
        if name == "prompts":
            return PromptView()
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
        return {"sft_responses": self.sft_responses} if self.hparams.view == "sft" else {}

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return check_pku_saferlhf_row(row)

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        return pku_label_notes(row)

    def synthetic(self, split: str, num_rows: int, seed: int) -> list[dict[str, Any]]:
        from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

        return generate_pku_saferlhf_rows(num_rows, seed=seed)


__all__ = ["PKUSafeRLHFDataModule", "PairView", "PreferenceView", "SafetyView", "VIEWS", "prompt_bucket"]
