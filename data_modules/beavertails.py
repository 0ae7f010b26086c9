"""BeaverTails (``PKU-Alignment/BeaverTails``) as a LightningDataModule, for moderation models.

Rows are (prompt, response) pairs with 14 harm categories (keys containing commas, kept whole) and ``is_safe``
(``../shared/docs/DATA.md``). The hub splits are ``30k_train``/``30k_test`` and ``330k_train``/``330k_test``; a
local JSON/JSONL/parquet file or a directory of split files works the same way. Validation, split carving by
prompt, preparation, streaming and ``predict_file`` are those of every lit_safe DataModule
(:class:`~lit_safe.data_modules.base.PreparedDataModule`); the one view is ``moderation``
(:class:`~lit_safe.data_modules.moderation_view.ModerationView`, no severity). Repeated (prompt, response) rows are
kept: in the 330k release they carry separate annotations; rows repeated whole are counted (note ``duplicate_rows``).
Rows with an empty or blank prompt or response are dropped and counted (``empty_prompt``, ``empty_response``).
"""

from __future__ import annotations

from typing import Any, Literal

from lit_safe.data_modules.base import PreparedDataModule
from lit_safe.data_modules.moderation_view import ModerationView, beavertails_responses, uses_pair_input
from lit_safe.data_modules.schemas import BEAVERTAILS_CATEGORIES, beavertails_label_notes, check_beavertails_row


class BeaverTailsDataModule(PreparedDataModule):
    """BeaverTails, prepared once with litdata and streamed, one item per (prompt, response).

    Args:
        source: a hub id (``PKU-Alignment/BeaverTails``), a local JSON/JSONL/parquet file, a directory of split
            files, or an already prepared directory / object-store URL.
        view: ``moderation``.
        train_split: the source split to train on (``30k_train`` or ``330k_train`` on the hub).
        test_split: the source split to test on; when the source has none (a single file), ``test_fraction`` of the
            training prompts is carved instead.
        test_fraction: share of training prompts held out for testing when the source has no test split.
        **kwargs: the settings every dataset shares (tokenizer, splits, lengths, batches, preparation), as
            :class:`~lit_safe.data_modules.base.PreparedDataModule` describes them.
    """

    dataset_name = "beavertails"
    views = ("moderation",)

    def __init__(
        self,
        source: str = "PKU-Alignment/BeaverTails",
        view: Literal["moderation"] = "moderation",
        train_split: str = "30k_train",
        test_split: str | None = "30k_test",
        test_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(source=source, view=view, train_split=train_split, test_split=test_split,
                         test_fraction=test_fraction, synthetic_rows=0, pack_pairs=False, **kwargs)

    def make_view(self, name: str) -> ModerationView:
        return ModerationView(BEAVERTAILS_CATEGORIES, beavertails_responses, severity_levels=0, dedup=False,
                              pair_input=uses_pair_input(self.tokenizer))

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return check_beavertails_row(row)

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        return beavertails_label_notes(row)


__all__ = ["BeaverTailsDataModule"]
