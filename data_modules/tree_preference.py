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
from lit_safe.data_modules.pku_saferlhf import PairView, PreferenceView, SafetyView
from lit_safe.data_modules.preparation import SplitReport
from lit_safe.data_modules.schemas import check_tree_pair_row


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
    """Preference pairs in the tree preference format, prepared once with litdata and streamed. Tree pairs share
    more than the prompt, so with ``pack_pairs`` they pack tighter than chain pairs.

    Args:
        source: a JSONL/JSON/parquet file of pairs, a directory of split files (``train.jsonl``, ``test.jsonl``), or
            an already prepared directory / object-store URL.
        view: ``preference`` (reward model) or ``safety`` (cost model).
        **kwargs: the settings every dataset shares (tokenizer, splits, lengths, batches, preparation), as
            :class:`~lit_safe.data_modules.base.PreparedDataModule` describes them.
    """

    dataset_name = "tree_preference"
    views = ("preference", "safety")

    def __init__(
        self,
        source: str = "pairs.jsonl",
        view: Literal["preference", "safety"] = "preference",
        **kwargs: Any,
    ) -> None:
        super().__init__(source=source, view=view, subset=None, revision=None, synthetic_rows=0, **kwargs)

    def make_view(self, name: str) -> PairView:
        view = TreePreferenceView if name == "preference" else TreeSafetyView
        return view(pack_pairs=self.hparams.pack_pairs)

    def check_row(self, row: Any) -> list[tuple[str, str]]:
        return check_tree_pair_row(row, labels=self.hparams.view)


__all__ = ["TreePreferenceDataModule", "TreePreferenceView", "TreeSafetyView"]
