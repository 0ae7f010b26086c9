"""Field names, label vocabularies and row checks of the datasets lit_safe reads.

Written from the dataset cards and from real rows (see ``../shared/docs/DATA.md``): PKU-SafeRLHF (the 2024
dual-preference release and the 2023 ``v0`` release, whose 7 fields are a subset of the 2024 ones) and BeaverTails
(per (prompt, response) labels with 14 harm categories).
Every check returns a list of ``(field, message)`` problems instead of raising, so that the caller can name the
file and the row, and decide between an error and a counted skip.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lit_safe.data_modules.sources import UndecodableRow

# The 19 harm categories of PKU-SafeRLHF (2024), in the exact spelling and dict order of the data (S1..S19).
PKU_HARM_CATEGORIES: tuple[str, ...] = (
    "Endangering National Security",
    "Insulting Behavior",
    "Discriminatory Behavior",
    "Endangering Public Health",
    "Copyright Issues",
    "Violence",
    "Drugs",
    "Privacy Violation",
    "Economic Crime",
    "Mental Manipulation",
    "Human Trafficking",
    "Physical Harm",
    "Sexual Content",
    "Cybercrime",
    "Disrupting Public Order",
    "Environmental Damage",
    "Psychological Harm",
    "White-Collar Crime",
    "Animal Abuse",
)
# Severity levels of the 2024 release: 0 safe, 1 minor, 2 moderate, 3 severe.
PKU_SEVERITY_LEVELS: tuple[str, ...] = ("safe", "minor", "moderate", "severe")

# The 7 fields of the 2023 release (revision "v0"); the 2024 release has all of them.
PKU_REQUIRED_FIELDS: dict[str, type] = {
    "prompt": str,
    "response_0": str,
    "response_1": str,
    "is_response_0_safe": bool,
    "is_response_1_safe": bool,
    "better_response_id": int,
    "safer_response_id": int,
}
# The safety labels among them: required only by the views that read them (safety, moderation, sft of the safer).
PKU_SAFETY_FIELDS: tuple[str, ...] = ("is_response_0_safe", "is_response_1_safe", "safer_response_id")
# The 9 fields the 2024 release adds; checked when present.
PKU_OPTIONAL_FIELDS: dict[str, type] = {
    "prompt_source": str,
    "response_0_source": str,
    "response_1_source": str,
    "response_0_harm_category": dict,
    "response_1_harm_category": dict,
    "response_0_severity_level": int,
    "response_1_severity_level": int,
    "response_0_sha256": str,
    "response_1_sha256": str,
}


def response_sha256(prompt: str, response: str) -> str:
    """The ``response_k_sha256`` of PKU-SafeRLHF: sha256 of ``prompt + response`` (UTF-8, no separator)."""
    return hashlib.sha256((prompt + response).encode("utf-8")).hexdigest()


def _type_name(value: Any) -> str:
    return type(value).__name__


def not_an_object(row: Any, field: str = "<row>") -> list[tuple[str, str]]:
    """The problem of a row that is not a JSON object: the reader's own (:class:`UndecodableRow`: not valid UTF-8,
    under ``<row>``), or its type."""
    if isinstance(row, UndecodableRow):
        return [("<row>", row.problem)]
    return [(field, f"expected a JSON object, got {_type_name(row)}")]


def is_blank(text: Any) -> bool:
    """Whether a prompt or response is empty or whitespace only (a view drops such texts and counts them)."""
    return isinstance(text, str) and not text.strip()


def text_digest(*texts: str) -> bytes:
    """A 16-byte digest of a sequence of texts (each length-prefixed, so no two sequences share an encoding): bounded
    state for spotting repeated (prompt, response, ...) tuples in a split."""
    digest = hashlib.blake2b(digest_size=16)
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


def row_digest(row: Any) -> bytes:
    """A 16-byte digest of a whole row (every field, key order ignored): equal rows have equal digests."""
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _is_type(value: Any, expected: type) -> bool:
    # bool is a subclass of int in Python: an int field must not accept True/False, nor a bool field 0/1.
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_fields(row: dict, fields: dict[str, Any], prefix: str = "", optional: bool = False) -> list:
    """``[(field, problem)]`` of the ``fields`` (name -> type) of a row: missing (unless ``optional``) or mistyped."""
    problems = []
    for name, expected in fields.items():
        value = row.get(name)
        if value is None:
            if not optional:
                problems.append((f"{prefix}{name}", "missing required field"))
        elif not _is_type(value, expected):
            problems.append((f"{prefix}{name}", f"expected {expected.__name__}, got {_type_name(value)} {value!r:.40}"))
    return problems


def check_harm_categories(
    value: Any, field: str, categories: tuple[str, ...] = PKU_HARM_CATEGORIES
) -> list[tuple[str, str]]:
    """``[(field, problem)]`` of a per-response harm-category dict: exactly the ``categories`` keys, bool values."""
    if not isinstance(value, dict):
        return [(field, f"expected dict, got {_type_name(value)} {value!r:.40}")]
    problems = []
    unknown = sorted(set(value) - set(categories))
    missing = sorted(set(categories) - set(value))
    if unknown:
        problems.append((field, f"unknown harm categories {unknown}"))
    if missing:
        problems.append((field, f"missing harm categories {missing}"))
    not_bool = sorted(k for k, v in value.items() if not isinstance(v, bool))
    if not_bool:
        problems.append((field, f"non-boolean values for {not_bool}"))
    return problems


def check_severity_level(value: Any, field: str) -> list[tuple[str, str]]:
    """``[(field, problem)]`` of a PKU severity level: an int 0 (safe) to 3 (severe)."""
    if not _is_type(value, int):
        return [(field, f"expected int, got {_type_name(value)} {value!r:.40}")]
    if value not in (0, 1, 2, 3):
        return [(field, f"expected a severity level 0-3, got {value}")]
    return []


def check_pku_saferlhf_row(row: Any, safety_labels: bool = True) -> list[tuple[str, str]]:
    """Check one PKU-SafeRLHF row (either release) against the schema.

    Args:
        row: the decoded JSON object of one row.
        safety_labels: whether the safety labels (:data:`PKU_SAFETY_FIELDS`: ``is_response_0_safe``,
            ``is_response_1_safe``, ``safer_response_id``) are required, as the views that read them (``safety``,
            ``moderation``) need; otherwise they are checked only when present, so that a file without them (e.g.
            ``PKU-SafeRLHF-single-dimension``) trains a reward model.

    Returns:
        ``[(field, problem), ...]``; empty when the row is valid. Semantic disagreements that occur in the real
        data (``is_safe`` vs severity vs categories) are not problems here: :func:`pku_label_notes` counts them.
    """
    if not isinstance(row, dict):
        return not_an_object(row)
    if safety_labels:
        problems = _check_fields(row, PKU_REQUIRED_FIELDS)
    else:
        problems = _check_fields(row, {k: v for k, v in PKU_REQUIRED_FIELDS.items() if k not in PKU_SAFETY_FIELDS})
        problems += _check_fields(row, {k: PKU_REQUIRED_FIELDS[k] for k in PKU_SAFETY_FIELDS}, optional=True)
    for name in ("better_response_id", "safer_response_id"):
        value = row.get(name)
        if _is_type(value, int) and value not in (0, 1):
            problems.append((name, f"expected 0 or 1, got {value}"))
    for name, expected in PKU_OPTIONAL_FIELDS.items():
        if name not in row or row[name] is None:
            continue
        value = row[name]
        if name.endswith("_severity_level"):
            problems += check_severity_level(value, name)
        elif name.endswith("_harm_category"):
            problems += check_harm_categories(value, name)
        elif not _is_type(value, expected):
            problems.append((name, f"expected {expected.__name__}, got {_type_name(value)} {value!r:.40}"))
    if not problems:
        for k in (0, 1):
            digest = row.get(f"response_{k}_sha256")
            if digest is not None and digest != response_sha256(row["prompt"], row[f"response_{k}"]):
                problems.append((f"response_{k}_sha256", "does not match sha256(prompt + response)"))
    return problems


def pku_label_notes(row: dict) -> list[str]:
    """Label disagreements that the real data has in a few rows; counted in the report, never asserted.

    Args:
        row: a row that passed :func:`check_pku_saferlhf_row` (labels it lacks are not compared).

    Returns:
        Names of the disagreements found: ``safety_label_contradiction`` (the safer response is labelled unsafe
        while the other is labelled safe) and ``is_safe_vs_severity`` / ``is_safe_vs_categories`` per response.
    """
    notes: list[str] = []
    safer = row.get("safer_response_id")
    labels = [row.get(f"is_response_{k}_safe") for k in (0, 1)]
    if safer is not None and None not in labels and not labels[safer] and labels[1 - safer]:
        notes.append("safety_label_contradiction")
    for k in (0, 1):
        is_safe = labels[k]
        if is_safe is None:
            continue
        severity = row.get(f"response_{k}_severity_level")
        if severity is not None and is_safe != (severity == 0):
            notes.append("is_safe_vs_severity")
        categories = row.get(f"response_{k}_harm_category")
        if categories is not None and is_safe == any(categories.values()):
            notes.append("is_safe_vs_categories")
    return notes


# The 14 harm categories of BeaverTails, in the dict order of the data. Several keys contain commas: they are names,
# never lists to split.
BEAVERTAILS_CATEGORIES: tuple[str, ...] = (
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
BEAVERTAILS_FIELDS: dict[str, type] = {"prompt": str, "response": str, "category": dict, "is_safe": bool}


def check_beavertails_row(row: Any) -> list[tuple[str, str]]:
    """Check one BeaverTails row: ``prompt``, ``response`` (str), ``category`` (the 14 keys, bool values),
    ``is_safe`` (bool). Returns ``[(field, problem), ...]``, empty when valid."""
    if not isinstance(row, dict):
        return not_an_object(row)
    problems = _check_fields(row, BEAVERTAILS_FIELDS)
    category = row.get("category")
    if isinstance(category, dict):
        unknown = sorted(set(category) - set(BEAVERTAILS_CATEGORIES))
        missing = sorted(set(BEAVERTAILS_CATEGORIES) - set(category))
        if unknown:
            problems.append(("category", f"unknown harm categories {unknown}"))
        if missing:
            problems.append(("category", f"missing harm categories {missing}"))
        not_bool = sorted(k for k, v in category.items() if not isinstance(v, bool))
        if not_bool:
            problems.append(("category", f"non-boolean values for {not_bool}"))
    return problems


def beavertails_label_notes(row: dict) -> list[str]:
    """``is_safe_vs_categories`` when a valid BeaverTails row's ``is_safe`` disagrees with its categories
    (counted, never asserted; the released data is consistent)."""
    return ["is_safe_vs_categories"] if row["is_safe"] == any(row["category"].values()) else []


# ------------------------------------------------------------------------------------------------------- SafeSora
# The 12 harm categories of SafeSora-Label (S1..S12), as the data spells its keys. ``racism`` is optional in the data.
SAFESORA_CATEGORIES: list[str] = [
    "porn",
    "violence",
    "hate",
    "terrorism",
    "contraband",
    "controversial",
    "racism",
    "other_discrimination",
    "animal_abuse",
    "child_abuse",
    "crime",
    "other_harmful",
]
SAFESORA_OPTIONAL_CATEGORIES = {"racism"}
SAFESORA_PROMPT_TYPES = ("safety_critical", "safety_neutral")
SAFESORA_CHOICES = ("video_0", "video_1")
# Sub-preferences of helpfulness; older files spell ``information`` as ``informativeness`` (both accepted).
SAFESORA_SUB_PREFERENCES = ("instruction_following", "correctness", "information", "aesthetics")
SAFESORA_SUB_ALIASES = {"informativeness": "information"}


def check_safesora_labels(labels: Any, field: str) -> list[tuple[str, str]]:
    """A ``prompt_labels``/``video_labels`` dict: the 12 category keys (``racism`` optional) with bool values."""
    if not isinstance(labels, dict):
        return [(field, f"expected dict, got {_type_name(labels)}")]
    problems = []
    for name in SAFESORA_CATEGORIES:
        if labels.get(name) is None:  # absent, or None where parquet/Arrow unified the keys of all rows
            if name not in SAFESORA_OPTIONAL_CATEGORIES:
                problems.append((f"{field}.{name}", "missing harm category"))
        elif not isinstance(labels[name], bool):
            problems.append((f"{field}.{name}", f"expected bool, got {_type_name(labels[name])} {labels[name]!r:.20}"))
    unknown = sorted(set(labels) - set(SAFESORA_CATEGORIES))
    if unknown:
        problems.append((field, f"unknown harm categories {unknown}; known: {SAFESORA_CATEGORIES}"))
    return problems


def check_safesora_video(record: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A video record: ``prompt_id, prompt_text, prompt_type, video_id, video_text, video_path`` (str), optional
    ``is_safe`` (bool), ``generated_from`` (str), and, in SafeSora-Label rows, ``prompt_labels``/``video_labels``."""
    if not isinstance(record, dict):
        return not_an_object(record, prefix.rstrip(".") or "<row>")
    required = {k: str for k in ("prompt_id", "prompt_text", "prompt_type", "video_id", "video_text", "video_path")}
    problems = _check_fields(record, required, prefix)
    problems += _check_fields(record, {"is_safe": bool, "generated_from": str}, prefix, optional=True)
    if isinstance(record.get("prompt_type"), str) and record["prompt_type"] not in SAFESORA_PROMPT_TYPES:
        problems.append((f"{prefix}prompt_type",
                         f"expected one of {SAFESORA_PROMPT_TYPES}, got {record['prompt_type']!r}"))
    for field in ("prompt_labels", "video_labels"):
        if record.get(field) is not None:
            problems += check_safesora_labels(record[field], f"{prefix}{field}")
    return problems


def check_safesora_pair(row: Any) -> list[tuple[str, str]]:
    """A SafeSora preference pair (see DATA.md): ids and prompt, two video records, ``helpfulness`` and
    ``harmlessness`` in ``{"video_0", "video_1"}``, and ``sub_preferences`` (``information`` or
    ``informativeness``), each ``"video_0"``/``"video_1"``."""
    if not isinstance(row, dict):
        return not_an_object(row)
    problems = _check_fields(row, {"pair_id": str, "prompt_id": str, "prompt_text": str, "prompt_type": str})
    for key in ("video_0", "video_1"):
        if row.get(key) is None:
            problems.append((key, "missing required field"))
        else:
            problems += check_safesora_video(row[key], f"{key}.")
    for key in ("helpfulness", "harmlessness"):
        if row.get(key) is None:
            problems.append((key, "missing required field"))
        elif row[key] not in SAFESORA_CHOICES:
            problems.append((key, f"expected 'video_0' or 'video_1', got {row[key]!r:.40}"))
    subs = row.get("sub_preferences")
    if subs is None:
        problems.append(("sub_preferences", "missing required field"))
    elif not isinstance(subs, dict):
        problems.append(("sub_preferences", f"expected dict, got {_type_name(subs)}"))
    else:
        named = {SAFESORA_SUB_ALIASES.get(k, k): v for k, v in subs.items() if v is not None}
        for name in SAFESORA_SUB_PREFERENCES:
            if name not in named:
                problems.append((f"sub_preferences.{name}", "missing sub-preference"))
            elif named[name] not in SAFESORA_CHOICES:
                problems.append((f"sub_preferences.{name}",
                                 f"expected 'video_0' or 'video_1', got {named[name]!r:.40}"))
    return problems


def check_safesora_label_row(row: Any) -> list[tuple[str, str]]:
    """A SafeSora-Label row: a video record with ``prompt_labels`` and ``video_labels`` (12 bools each)."""
    problems = check_safesora_video(row)
    if isinstance(row, dict):
        for field in ("prompt_labels", "video_labels"):
            if row.get(field) is None:
                problems.append((field, "missing required field"))
    return problems


def check_safesora_eval_row(row: Any) -> list[tuple[str, str]]:
    """A SafeSora-Eval row: ``prompt_id``, ``prompt_text``, ``prompt_type`` (str)."""
    if not isinstance(row, dict):
        return not_an_object(row)
    problems = _check_fields(row, {"prompt_id": str, "prompt_text": str, "prompt_type": str})
    if isinstance(row.get("prompt_type"), str) and row["prompt_type"] not in SAFESORA_PROMPT_TYPES:
        problems.append(("prompt_type", f"expected one of {SAFESORA_PROMPT_TYPES}, got {row['prompt_type']!r}"))
    return problems


def safesora_sub_preferences(row: dict) -> dict[str, str]:
    """The four sub-preferences of a valid pair under their current names (``informativeness`` -> ``information``)."""
    return {SAFESORA_SUB_ALIASES.get(k, k): v for k, v in row["sub_preferences"].items() if v is not None}


# The tree preference format (lit_safe.trees; "Rethinking Information Structures in RLHF", arXiv 2402.10184): the
# PKU-SafeRLHF pair fields the reward and cost views read, plus the provenance of each pair.
TREE_PAIR_FIELDS: dict[str, Any] = {"pair_id": str, "prompt": str, "response_0": str, "response_1": str}
TREE_PREFERENCE_FIELDS: dict[str, Any] = {"better_response_id": int}
TREE_SAFETY_FIELDS: dict[str, Any] = {"safer_response_id": int, "is_response_0_safe": bool,
                                      "is_response_1_safe": bool}
TREE_PROVENANCE_FIELDS: dict[str, Any] = {
    "tree_id": str, "topology": str, "path_0": list, "path_1": list, "lca_depth": int,
    "shared_prefix_tokens": int, "divergence_index": int, "shared_prefix_chars": int, "label_source": str,
}


def check_tree_pair_row(row: Any, labels: str = "preference") -> list[tuple[str, str]]:
    """Check one row of the tree preference format.

    Args:
        row: the decoded JSON object of one row.
        labels: which labels the reading view needs: ``preference`` (``better_response_id``) or ``safety``
            (``safer_response_id``, ``is_response_0_safe``, ``is_response_1_safe``). The other view's labels may be
            absent.

    Returns:
        ``[(field, problem), ...]``; empty when the row is valid. Provenance fields are optional (a plain pair file
        with a ``pair_id`` trains too) but must have the right type and range when present.
    """
    if not isinstance(row, dict):
        return not_an_object(row)
    needed = TREE_PREFERENCE_FIELDS if labels == "preference" else TREE_SAFETY_FIELDS
    problems = _check_fields(row, {**TREE_PAIR_FIELDS, **needed})
    problems += _check_fields(row, TREE_PROVENANCE_FIELDS, optional=True)
    for name in ("better_response_id", "safer_response_id"):
        value = row.get(name)
        if _is_type(value, int) and value not in (0, 1):
            problems.append((name, f"expected 0 or 1, got {value}"))
    topology = row.get("topology")
    if isinstance(topology, str) and topology not in ("tree", "chain", "chain_equal_responses"):
        problems.append(("topology", f"expected tree, chain or chain_equal_responses, got {topology!r:.40}"))
    for name in ("path_0", "path_1"):
        value = row.get(name)
        if isinstance(value, list) and not all(_is_type(v, int) and v >= 0 for v in value):
            problems.append((name, f"expected a list of child indices >= 0, got {value!r:.40}"))
    for name in ("lca_depth", "shared_prefix_tokens", "divergence_index", "shared_prefix_chars"):
        value = row.get(name)
        if _is_type(value, int) and value < 0:
            problems.append((name, f"expected a count >= 0, got {value}"))
    return problems
