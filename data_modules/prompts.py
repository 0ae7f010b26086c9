"""Prompt lists for evaluation: the distinct user prompts of a file of rows, or of a synthetic source.

The arenas compare models on a list of prompts; where the list comes from is the command line's business
(``lit-safe arena --prompts FILE``), so the arenas never reach a data module. :func:`read_prompts` reads rows with a
``prompt`` (PKU-SafeRLHF, BeaverTails, BeaverTails-Evaluation) or ``synthetic``: the prompts of the synthetic test
split the quickstart configs hold out. :func:`read_video_prompts` reads SafeSora(-Eval) rows (``prompt_text``) or
``synthetic``: SafeSora-Eval-style synthetic prompts. Repeated prompts are kept once, in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_safe.data_modules.sources import DataValidationError, read_file

SYNTHETIC_TEST = {"num_rows": 500, "seed": 43}  # the held-out split of the quickstart configs (4,000 rows, seed 42)


def distinct_prompts(rows: Iterable[tuple[str, Any]], limit: int | None = None,
                     fields: tuple[str, ...] = ("prompt",)) -> list[str]:
    """The distinct prompts of ``(location, row)`` pairs, in order, at most ``limit``: each row's first present field
    of ``fields``.

    Raises:
        DataValidationError: a row without a string prompt, named by its location.
    """
    prompts, seen = [], set()
    for where, row in rows:
        prompt = next((row[field] for field in fields if field in row), None) if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            raise DataValidationError(f"{where}: field '{fields[0]}': expected a string, got {type(prompt).__name__}")
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a JSON/JSONL/parquet file of rows with a string ``prompt``, or ``synthetic`` (the quickstart's
    held-out synthetic prompts).

    Raises:
        DataValidationError: a row without a string ``prompt``, named by its line; or no prompt at all.
    """
    if str(path) == "synthetic":
        from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows

        rows = ((f"synthetic test row {i}", row) for i, row in enumerate(generate_pku_saferlhf_rows(**SYNTHETIC_TEST)))
    else:
        rows = read_file(path)
    return _nonempty(distinct_prompts(rows, limit), path)


def read_video_prompts(path: str, limit: int | None = None, seed: int = 0) -> list[str]:
    """User prompts from SafeSora-Eval/SafeSora rows (``prompt_text``) or rows with a ``prompt`` (JSON, JSONL,
    gzip'd JSON array, parquet), or ``synthetic`` (``limit`` SafeSora-Eval-style synthetic prompts, 40 by default,
    half of them red-team, drawn with ``seed``).

    Raises:
        DataValidationError: a row without a string ``prompt_text`` or ``prompt``, named by its location; or no prompt
            at all.
    """
    if path == "synthetic":
        from lit_safe.data_modules.safesora_synthetic import eval_prompts

        rows = ((f"synthetic eval row {i}", row) for i, row in enumerate(eval_prompts(limit or 40, seed)))
    else:
        rows = read_file(path)
    return _nonempty(distinct_prompts(rows, limit, fields=("prompt_text", "prompt")), path)


def _nonempty(prompts: list[str], path: str | Path) -> list[str]:
    if not prompts:
        raise DataValidationError(f"{path}: no prompts")
    return prompts


__all__ = ["SYNTHETIC_TEST", "distinct_prompts", "read_prompts", "read_video_prompts"]
