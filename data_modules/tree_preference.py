"""Tree-structured (and chain) preference pairs as a LightningDataModule, for reward and cost models.

Reads JSON lines in the tree preference format of :mod:`lit_safe.trees` (written by ``lit-safe tree-pairs`` and
``lit-safe tree-experiment``, or by any tool: the README documents the fields): the PKU-SafeRLHF pair fields
(``prompt``, ``response_0``, ``response_1``, ``better_response_id``; for the cost model ``safer_response_id`` and
``is_response_k_safe``) and the provenance of each pair (``pair_id``, ``tree_id``, ``topology``, ``path_0``/``path_1``,
``lca_depth``, ``shared_prefix_tokens``, ``divergence_index``, ``shared_prefix_chars``, ``label_source``).

Views: ``preference`` (``chosen``/``rejected`` by ``better_response_id``, for
:class:`~lit_safe.modules.reward.RewardModule`) and ``safety`` (``unsafer``/``safer`` with cost signs, for
:class:`~lit_safe.modules.cost.CostModule`): the pair views of PKU-SafeRLHF, so both trainers read tree data
unchanged. Each item also carries ``lca_depth`` (-1 when the row has none), batched as ``(B,)``, so an evaluation can
bin accuracy by the depth at which two responses diverge. With ``loss_type: token`` the reward loss starts at the
first differing token, which for a tree pair is the branch point.

Validation, split carving by prompt (all pairs of one tree land in one split), preparation, streaming and
``predict_file`` are those of every lit_safe DataModule (:class:`~lit_safe.data_modules.base.PreparedDataModule`).
"""

from __future__ import annotations

from typing import Any, Literal

from lit_safe.data_modules.base import PreparedDataModule
from lit_safe.data_modules.pku_saferlhf import PreferenceView, SafetyView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import check_tree_pair_row
from lit_safe.models.text import SAFE_RLHF_TEMPLATE


def _lca_depth(row: dict[str, Any]) -> int:
    """The pair's LCA depth, -1 when the row has none (absent or null: a plain pair file)."""
    depth = row.get("lca_depth")
    return -1 if depth is None else depth


class TreePreferenceView(PreferenceView):
    """``chosen``/``rejected`` pairs by ``better_response_id``, with the pair's ``lca_depth``."""

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]]:
        first, extras = super().rank(row, report)
        return first, {**extras, "lca_depth": _lca_depth(row)}


class TreeSafetyView(SafetyView):
    """``unsafer``/``safer`` pairs with cost signs (self-contradicting rows dropped), with the pair's ``lca_depth``."""

    def rank(self, row: dict[str, Any], report: SplitReport) -> tuple[int, dict[str, int]] | None:
        ranked = super().rank(row, report)
        if ranked is None:
            return None
        first, extras = ranked
        return first, {**extras, "lca_depth": _lca_depth(row)}


class TreePreferenceDataModule(PreparedDataModule):
    """Preference pairs in the tree preference format, prepared once with litdata and streamed.

    Args:
        tokenizer: tokenizer preset, hub id or path; must be the model's (use the same value as ``backbone``).
        source: a JSONL/JSON/parquet file of pairs, a directory of split files (``train.jsonl``, ``test.jsonl``), or
            an already prepared directory / object-store URL.
        view: ``preference`` (reward model) or ``safety`` (cost model).
        train_split: the source split to train on.
        val_split: the source split to validate on; ``None`` carves ``val_fraction`` of the training prompts.
        test_split: the source split to test on; when the source has none, ``test_fraction`` of the training prompts
            is carved instead; ``None`` for no test split.
        val_fraction: share of training prompts held out for validation when ``val_split`` is ``None`` (0: none).
        test_fraction: share of training prompts held out for testing when the source has no test split.
        prompt_template: conversation template containing ``{prompt}``.
        max_length: longest tokenised sequence (prompt + response + EOS); longer responses are cut before EOS.
        batch_size: pairs per training batch (per device).
        eval_batch_size: per validation/test/predict batch; defaults to ``batch_size``.
        num_workers: litdata loader workers.
        group_size: batches per length-grouping pool (1 turns grouping off).
        pad_to_multiple_of: round padded lengths up (8 helps tensor cores on GPUs).
        pack_pairs: one row per pair, the shared prefix computed once (see
            :class:`~lit_safe.data_modules.pku_saferlhf.PairView`); tree pairs share more than the prompt, so they
            pack tighter than chain pairs.
        on_bad_row: ``error`` stops at invalid rows and names them; ``skip`` drops and counts them.
        prepared_dir: where prepared datasets are written (default ``$LIT_SAFE_CACHE/prepared``).
        predict_file: a JSONL of ``{"prompt", "response"}`` lines for ``lit-safe predict``.
        seed: seeds the split carving and the shuffling.
        storage_options: boto3 client arguments for ``s3://`` locations (``endpoint_url``...); ``None``: the ``AWS_*``
            environment variables (see :class:`~lit_safe.data_modules.base.PreparedDataModule`).
    """

    dataset_name = "tree_preference"
    views = ("preference", "safety")

    def __init__(
        self,
        tokenizer: str = "tiny",
        source: str = "pairs.jsonl",
        view: Literal["preference", "safety"] = "preference",
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = "test",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        prompt_template: str = SAFE_RLHF_TEMPLATE,
        max_length: int = 512,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        group_size: int = 64,
        pad_to_multiple_of: int = 1,
        pack_pairs: bool = False,
        on_bad_row: Literal["error", "skip"] = "error",
        prepared_dir: str | None = None,
        predict_file: str | None = None,
        seed: int = 42,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer, source=source, view=view, subset=None, revision=None, train_split=train_split,
            val_split=val_split, test_split=test_split, val_fraction=val_fraction, test_fraction=test_fraction,
            synthetic_rows=0, prompt_template=prompt_template, max_length=max_length, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, group_size=group_size,
            pad_to_multiple_of=pad_to_multiple_of, pack_pairs=pack_pairs, on_bad_row=on_bad_row,
            prepared_dir=prepared_dir, predict_file=predict_file, seed=seed,
            storage_options=storage_options,
        )

    def make_view(self, name: str) -> Any:
        view = TreePreferenceView if name == "preference" else TreeSafetyView
        return view(pack_pairs=self.hparams.pack_pairs)

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return check_tree_pair_row(row, labels=self.hparams.view)


__all__ = ["TreePreferenceDataModule", "TreePreferenceView", "TreeSafetyView"]
