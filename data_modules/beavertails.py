"""BeaverTails (``PKU-Alignment/BeaverTails``) as a LightningDataModule, for moderation models.

Rows are (prompt, response) pairs with 14 harm categories (keys containing commas, kept whole) and ``is_safe``
(``../shared/docs/DATA.md``). The hub splits are ``30k_train``/``30k_test`` and ``330k_train``/``330k_test``; a
local JSON/JSONL/parquet file or a directory of split files works the same way. Validation, split carving by
prompt, preparation, streaming and ``predict_file`` are those of every lit_safe DataModule
(:class:`~lit_safe.data_modules.base.PreparedDataModule`); the one view is ``moderation``
(:class:`~lit_safe.data_modules.moderation.ModerationView`, no severity). Repeated (prompt, response) rows are kept:
in the 330k release they carry separate annotations; rows repeated whole are counted (note ``duplicate_rows``). Rows
with an empty or blank prompt or response are dropped and counted (``empty_prompt``, ``empty_response``).
"""

from __future__ import annotations

from typing import Any, Literal

from lit_safe.data_modules.base import PreparedDataModule
from lit_safe.data_modules.moderation_view import ModerationView, beavertails_responses, uses_pair_input
from lit_safe.data_modules.schemas import BEAVERTAILS_CATEGORIES, beavertails_label_notes, check_beavertails_row
from lit_safe.models.text import SAFE_RLHF_TEMPLATE


class BeaverTailsDataModule(PreparedDataModule):
    """BeaverTails, prepared once with litdata and streamed, one item per (prompt, response).

    Args:
        tokenizer: tokenizer preset, hub id or path; must be the model's (use the same value as ``backbone``).
        source: a hub id (``PKU-Alignment/BeaverTails``), a local JSON/JSONL/parquet file, a directory of split
            files, or an already prepared directory / object-store URL.
        view: ``moderation``.
        subset: the hub config name (``None``: the default).
        revision: the hub revision to pin.
        train_split: the source split to train on (``30k_train`` or ``330k_train`` on the hub).
        val_split: the source split to validate on; ``None`` carves ``val_fraction`` of the training prompts.
        test_split: the source split to test on; when the source has none (a single file), ``test_fraction`` of the
            training prompts is carved instead.
        val_fraction: share of training prompts held out for validation when ``val_split`` is ``None`` (0: none).
        test_fraction: share of training prompts held out for testing when the source has no test split.
        prompt_template: conversation template for decoder backbones (encoders read a sentence pair).
        max_length: longest tokenised (prompt, response).
        batch_size: responses per training batch (per device).
        eval_batch_size: per validation/test/predict batch; defaults to ``batch_size``.
        num_workers: litdata loader workers.
        group_size: batches per length-grouping pool (1 turns grouping off).
        pad_to_multiple_of: round padded lengths up.
        on_bad_row: ``error`` stops at invalid rows and names them; ``skip`` drops and counts them.
        prepared_dir: where prepared datasets are written.
        predict_file: a JSONL of ``{"prompt", "response"}`` lines for ``lit-safe predict``; ``None``: the test split.
        seed: seeds the split carving and the shuffling.
        storage_options: boto3 client arguments for ``s3://`` locations (``endpoint_url``...); ``None``: the ``AWS_*``
            environment variables (see :class:`~lit_safe.data_modules.base.PreparedDataModule`).
    """

    dataset_name = "beavertails"
    views = ("moderation",)

    def __init__(
        self,
        tokenizer: str = "tiny",
        source: str = "PKU-Alignment/BeaverTails",
        view: Literal["moderation"] = "moderation",
        subset: str | None = None,
        revision: str | None = None,
        train_split: str = "30k_train",
        val_split: str | None = None,
        test_split: str | None = "30k_test",
        val_fraction: float = 0.05,
        test_fraction: float = 0.1,
        prompt_template: str = SAFE_RLHF_TEMPLATE,
        max_length: int = 512,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        group_size: int = 64,
        pad_to_multiple_of: int = 1,
        on_bad_row: Literal["error", "skip"] = "error",
        prepared_dir: str | None = None,
        predict_file: str | None = None,
        seed: int = 42,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer, source=source, view=view, subset=subset, revision=revision,
            train_split=train_split, val_split=val_split, test_split=test_split, val_fraction=val_fraction,
            test_fraction=test_fraction, synthetic_rows=0, prompt_template=prompt_template, max_length=max_length,
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, group_size=group_size,
            pad_to_multiple_of=pad_to_multiple_of, pack_pairs=False, on_bad_row=on_bad_row,
            prepared_dir=prepared_dir, predict_file=predict_file, seed=seed,
            storage_options=storage_options,
        )

    def make_view(self, name: str) -> ModerationView:
        return ModerationView(BEAVERTAILS_CATEGORIES, beavertails_responses, severity_levels=0, dedup=False,
                              pair_input=uses_pair_input(self.tokenizer))

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return check_beavertails_row(row)

    def row_notes(self, row: dict[str, Any]) -> list[str]:
        return beavertails_label_notes(row)


__all__ = ["BeaverTailsDataModule"]
