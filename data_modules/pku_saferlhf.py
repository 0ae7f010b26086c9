"""PKU-SafeRLHF as a LightningDataModule: validate -> tokenise -> litdata chunks -> length-grouped streaming.

Reads the 2024 dual-preference release (16 fields) and the 2023 ``v0`` release (its 7-field subset) from the hub
(pinned ``revision`` and config), from local JSON/JSONL/parquet files or directories of split files, from an
already prepared litdata directory (local or an object-store URL such as ``s3://bucket/prepared``), or from the
project's synthetic generator (the embedded default, no network). See ``../shared/docs/DATA.md``.

Views turn a validated row into training items:

- ``preference``: (better, worse) by ``better_response_id``: the helpfulness reward model (Safe RLHF).
- ``safety``: (less safe, safer) by ``safer_response_id`` with a cost sign per response from
  ``is_response_k_safe``: the cost model (self-contradicting rows are dropped and counted).

Preparation validates every row before anything is written: a missing field, a wrong type or an out-of-range label
is an error naming the file, row and field (or, with ``on_bad_row: skip``, a counted drop); rows a view cannot use
(identical responses) are dropped and counted; label disagreements the real data has in a few rows are counted as
notes. The report (rows read, kept, dropped by reason) is printed and saved as ``report.json``.
Splits are the dataset's own, or carved from the training split by a seeded hash of the *prompt*, so that
held-out pairs never share a prompt with training pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from litdata import StreamingDataset

from lit_safe.data_modules import sources
from lit_safe.data_modules.preparation import (
    REPORT_FILE,
    SPLITS,
    PrepareReport,
    SplitReport,
    fingerprint,
    is_prepared,
    publish,
    staging_dir,
    write_split,
)
from lit_safe.data_modules.schemas import check_pku_saferlhf_row, pku_label_notes
from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.streaming import LengthGroupedLoader, pad_right
from lit_safe.data_modules.text import (
    SAFE_RLHF_TEMPLATE,
    encode_with_eos,
    format_prompt,
    pack_pair,
    pair_attention,
    shared_prefix_length,
)
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint

FORMAT_VERSION = 2  # 2: item 'row' is the position in the source split
MAX_LISTED_PROBLEMS = 10
Row = tuple[str, dict[str, Any]]  # (location, row) as read from the source
Valid = tuple[int, dict[str, Any]]  # (position of the row in its source split, counted from 0; the row)


class PairView:
    """Two responses to one prompt, ordered: ``first`` is the one the score model must score higher.

    Subclasses say which response comes first (:meth:`rank`), under which item keys, and what else each pair
    carries (scalar fields such as safety signs, batched as ``(B,)`` tensors).

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
        for index, row in rows:
            if row["response_0"] == row["response_1"]:
                report.dropped["identical_responses"] += 1
                continue
            ranked = self.rank(row, report)
            if ranked is None:
                continue
            first, extras = ranked
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

    def length(self, item: dict[str, Any]) -> int:
        """Tokens the item costs in a batch (what length grouping sorts by)."""
        a, b = item[self.first], item[self.second]
        if self.pack_pairs:
            return len(a) + len(b) - shared_prefix_length(a, b)
        return max(len(a), len(b))

    def collate(self, items: list[dict[str, Any]], pad_id: int, multiple_of: int = 1) -> dict[str, Any]:
        import torch

        extras = {
            key: torch.as_tensor([int(i[key]) for i in items])
            for key in items[0]
            if key not in (self.first, self.second)
        }
        if not self.pack_pairs:
            sequences = [i[self.first] for i in items] + [i[self.second] for i in items]
            ids, mask = pad_right(sequences, pad_id, multiple_of)
            return {"input_ids": ids, "attention_mask": mask, **extras}
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


def prompt_bucket(prompt: str, seed: int) -> float:
    """A deterministic number in [0, 1) per prompt: rows with the same prompt always land in the same split."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class PKUSafeRLHFDataModule(LightningDataModule):
    """PKU-SafeRLHF (or any file in its schema), prepared once with litdata and streamed.

    Args:
        tokenizer: tokenizer preset, hub id or path; must be the model's (use the same value as ``backbone``).
        source: ``synthetic`` (the embedded default), a hub id (``PKU-Alignment/PKU-SafeRLHF``), a local
            JSON/JSONL/parquet file, a directory of split files (``train.jsonl``, ``test.jsonl``) or a local clone
            of the hub repository, or an already prepared directory / object-store URL.
        view: which items to build from a row (``preference`` or ``safety``).
        subset: the hub config name (``default``, ``alpaca-7b``, ``alpaca2-7b``, ``alpaca3-8b``); ``None`` for
            the 2023 release.
        revision: the hub revision to pin (``v0`` is the 2023 release of the Safe RLHF paper).
        train_split: the source split to train on.
        val_split: the source split to validate on; ``None`` carves ``val_fraction`` of the training prompts.
        test_split: the source split to test on; when the source has no such split, ``test_fraction`` of the
            training prompts is carved instead.
        val_fraction: share of training prompts held out for validation when ``val_split`` is ``None``.
        test_fraction: share of training prompts held out for testing when the source has no test split.
        synthetic_rows: training rows of the synthetic source (its test split has one eighth as many).
        prompt_template: conversation template containing ``{prompt}``, where the user prompt goes.
        max_length: longest tokenised sequence (prompt + response + EOS); longer responses are cut before EOS.
        batch_size: pairs per training batch (per device).
        eval_batch_size: pairs per validation/test batch; defaults to ``batch_size``.
        num_workers: litdata loader workers.
        group_size: batches per length-grouping pool (1 turns grouping off).
        pad_to_multiple_of: round padded lengths up (8 helps tensor cores on GPUs).
        pack_pairs: (preference view) one row per pair with the shared prompt computed once, instead of two
            padded rows: the same scores and gradients from fewer tokens with almost no padding. On a CPU it pays
            (small preset: 1.4x the pairs/s of grouped unpacked pairs, padding 13% -> 0.8%); on an H200 with a
            1B model it paid at 64 pairs per GPU (+10%, less memory) but not at 16 (the custom mask rules out
            flash attention), so it is off by default (``benchmarks/results/``). Its ``(B, 1, L, L)`` mask grows
            with the square of the length; it does not combine with ``loss_type: token``.
        on_bad_row: ``error`` stops at invalid rows and names them; ``skip`` drops and counts them.
        prepared_dir: where prepared datasets are written (default ``$LIT_SAFE_CACHE/prepared`` or
            ``~/.cache/lit_safe/prepared``).
        seed: seeds the split carving, the synthetic data and the shuffling.
    """

    def __init__(
        self,
        tokenizer: str = "tiny",
        source: str = "synthetic",
        view: Literal["preference", "safety"] = "preference",
        subset: str | None = "default",
        revision: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        test_split: str | None = "test",
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        synthetic_rows: int = 4000,
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
        seed: int = 42,
    ) -> None:
        super().__init__()
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; views: {sorted(VIEWS)}")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must leave training rows")
        format_prompt("", prompt_template)  # fails early on a template without {prompt}
        self.save_hyperparameters()
        self.view = VIEWS[view](pack_pairs=pack_pairs)
        self.tokenizer = load_tokenizer(tokenizer)
        self.eval_batch_size = eval_batch_size or batch_size
        root = prepared_dir or Path(__import__("os").environ.get("LIT_SAFE_CACHE", "~/.cache/lit_safe")) / "prepared"
        self.prepared_root = Path(root).expanduser()
        self.datasets: dict[str, StreamingDataset] = {}
        self.report: PrepareReport | None = None

    # --------------------------------------------------------------------------------------------- where data is
    def _source_kind(self) -> str:
        source = self.hparams.source
        if source == "synthetic":
            return "synthetic"
        if "://" in source:
            return "prepared"
        path = Path(source).expanduser()
        if path.is_dir():
            if is_prepared(path):
                return "prepared"
            return "dir" if sources.local_splits(path) else "hub"
        if path.is_file():
            return "file"
        if path.suffix or source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"data source not found: {source}")
        return "hub"

    def _source_splits(self) -> list[str]:
        kind, hp = self._source_kind(), self.hparams
        if kind == "synthetic":
            return ["train", "test"]
        if kind == "file":
            return ["train"]
        if kind == "dir":
            return list(sources.local_splits(Path(hp.source).expanduser()))
        return sources.hub_split_names(hp.source, hp.subset, hp.revision)

    def _read(self, split: str) -> Iterator[Row]:
        kind, hp = self._source_kind(), self.hparams
        if kind == "synthetic":
            from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

            if split == "train":
                n, seed = hp.synthetic_rows, hp.seed
            else:
                n, seed = max(hp.synthetic_rows // 8, 1), hp.seed + 1
            for index, row in enumerate(generate_pku_saferlhf_rows(n, seed=seed)):
                yield f"synthetic(seed={seed})/{split} row {index}", row
        elif kind == "file":
            yield from sources.read_file(Path(hp.source).expanduser())
        elif kind == "dir":
            yield from sources.read_file(sources.local_splits(Path(hp.source).expanduser())[split])
        else:
            yield from sources.read_hub(hp.source, split, hp.subset, hp.revision)

    def _settings(self) -> dict[str, Any]:
        hp = self.hparams
        source: Any = hp.source
        kind = self._source_kind()
        if kind in ("file", "dir"):
            path = Path(hp.source).expanduser().resolve()
            files = [path] if path.is_file() else sorted(sources.local_splits(path).values())
            source = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        return {
            "dataset": "pku_saferlhf",
            "format_version": FORMAT_VERSION,
            "view": hp.view,
            "source": source,
            "subset": hp.subset if kind == "hub" else None,
            "revision": hp.revision if kind == "hub" else None,
            "splits": [hp.train_split, hp.val_split, hp.test_split, hp.val_fraction, hp.test_fraction],
            "synthetic_rows": hp.synthetic_rows if kind == "synthetic" else None,
            "template": hp.prompt_template,
            "max_length": hp.max_length,
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "on_bad_row": hp.on_bad_row,
            "seed": hp.seed,
        }

    def prepared_location(self) -> str:
        """The prepared dataset this configuration streams from (a local directory or a URL)."""
        if self._source_kind() == "prepared":
            return self.hparams.source
        return str(self.prepared_root / f"pku_saferlhf-{self.hparams.view}-{fingerprint(self._settings())}")

    # ------------------------------------------------------------------------------------------------- preparing
    def _validated(self, rows: Iterator[Row], report_for: dict[str, SplitReport], assign) -> dict[str, list[Valid]]:
        """Check every row; returns the valid rows per output split, or raises naming the bad rows."""
        out: dict[str, list[Valid]] = {name: [] for name in report_for}
        problems: list[str] = []
        n_problems = 0
        for position, (where, row) in enumerate(rows):
            split = assign(row)
            report = report_for[split]
            report.rows_read += 1
            found = check_pku_saferlhf_row(row)
            if found:
                n_problems += 1
                if len(problems) < MAX_LISTED_PROBLEMS:
                    problems.append(f"{where}: field '{found[0][0]}': {found[0][1]}")
                report.dropped[f"invalid:{found[0][0]}"] += 1
                continue
            for note in pku_label_notes(row):
                report.notes[note] += 1
            out[split].append((position, row))
        if problems and self.hparams.on_bad_row == "error":
            more = f"\n  ... and {n_problems - len(problems)} more" if n_problems > len(problems) else ""
            raise DataValidationError(
                f"{n_problems} invalid row(s) in {self.hparams.source}:\n  " + "\n  ".join(problems) + more
                + "\n(set on_bad_row: skip to drop and count them instead)"
            )
        return out

    def prepare(self, force: bool = False) -> PrepareReport:
        """Validate, tokenise and write every split; reuse an identical earlier preparation unless ``force``.

        Returns:
            The report (also saved as ``report.json`` in the prepared directory).
        """
        location = self.prepared_location()
        if self._source_kind() == "prepared":
            self.report = self._load_report(location)
            return self.report
        final = Path(location)
        if is_prepared(final) and not force:
            self.report = self._load_report(location)
            print(f"Reusing an identical earlier preparation.\n{self.report.format()}")
            return self.report
        hp = self.hparams
        available = self._source_splits()
        if hp.train_split not in available:
            raise DataValidationError(f"{hp.source} has no split {hp.train_split!r}; splits: {available}")
        if hp.val_split is not None and hp.val_split not in available:
            raise DataValidationError(f"{hp.source} has no split {hp.val_split!r}; splits: {available}")
        carve_test = hp.test_split is not None and hp.test_split not in available
        val_cut = hp.val_fraction if hp.val_split is None else 0.0
        test_cut = val_cut + (hp.test_fraction if carve_test else 0.0)

        def assign_train(row: Any) -> str:
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(prompt, str):
                return "train"
            bucket = prompt_bucket(prompt, hp.seed)
            return "val" if bucket < val_cut else "test" if bucket < test_cut else "train"

        reports = {name: SplitReport() for name in SPLITS}
        rows = self._validated(self._read(hp.train_split), reports, assign_train)
        if hp.val_split is not None:
            rows["val"] = self._validated(self._read(hp.val_split), {"val": reports["val"]}, lambda _: "val")["val"]
        if hp.test_split is not None and not carve_test:
            rows["test"] = self._validated(self._read(hp.test_split), {"test": reports["test"]}, lambda _: "test")[
                "test"
            ]
        tmp = staging_dir(final)
        report = PrepareReport(source=str(hp.source), view=hp.view, output_dir=str(final))
        try:
            for split in SPLITS:
                if not rows.get(split) and reports[split].rows_read == 0:
                    continue
                items = self.view.encode(rows[split], self.tokenizer, hp.prompt_template, hp.max_length, reports[split])
                write_split(items, tmp / split)
                report.splits[split] = reports[split]
            publish(tmp, final, report, {"settings": self._settings(), "hparams": dict(hp)}, replace=force)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.report = report
        print(report.format())
        return report

    @staticmethod
    def _load_report(location: str) -> PrepareReport:
        if "://" in location:
            return PrepareReport(source=location, view="prepared", output_dir=location)
        data = json.loads((Path(location) / REPORT_FILE).read_text())
        report = PrepareReport(source=data["source"], view=data["view"], output_dir=data["output_dir"])
        for name, split in data["splits"].items():
            report.splits[name] = SplitReport(split["rows_read"], split["kept"])
            report.splits[name].dropped.update(split["dropped"])
            report.splits[name].notes.update(split["notes"])
        return report

    # ----------------------------------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        location = self.prepared_location()
        if "://" not in location and not is_prepared(location):
            self.prepare()

    def _dataset(self, split: str) -> StreamingDataset:
        """The streaming dataset of a prepared split (opened once; a remote split is opened when first asked for)."""
        if split not in self.datasets:
            location = self.prepared_location()
            path = f"{location}/{split}"
            if "://" not in location and not (Path(path) / "index.json").is_file():
                raise ValueError(f"the prepared dataset {location} has no {split!r} split")
            self.datasets[split] = StreamingDataset(path, shuffle=split == "train", seed=self.hparams.seed)
        return self.datasets[split]

    def _loader(self, split: str, train: bool) -> LengthGroupedLoader:
        pad_id, multiple = self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of
        return LengthGroupedLoader(
            self._dataset(split),
            batch_size=self.hparams.batch_size if train else self.eval_batch_size,
            collate=lambda items: self.view.collate(items, pad_id, multiple),
            length=self.view.length,
            group_size=self.hparams.group_size,
            num_workers=self.hparams.num_workers,
            seed=self.hparams.seed,
            shuffle=train,
        )

    def train_dataloader(self) -> LengthGroupedLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> LengthGroupedLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> LengthGroupedLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> LengthGroupedLoader:
        return self._loader("test", train=False)


__all__ = ["PKUSafeRLHFDataModule", "PairView", "PreferenceView", "SafetyView", "VIEWS"]
