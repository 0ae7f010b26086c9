"""Preference data in the formats users have, normalised to the PKU-SafeRLHF pair that every view reads.

Formats (``format`` of :class:`~lit_safe.data_modules.pku_saferlhf.PKUSafeRLHFDataModule`; ``auto`` detects it from
the first row whose fields fit one, see :func:`detect_format`):

- ``pku_saferlhf``: ``prompt``, ``response_0``, ``response_1``, ``better_response_id`` and the safety labels
  ``is_response_0_safe``, ``is_response_1_safe``, ``safer_response_id`` (either release; the 2024 extras are checked
  when present). Rows are used as they are: the prepared data is the same as before formats existed.
- ``prompt_chosen_rejected``: TRL's explicit-prompt preference rows, ``prompt``, ``chosen``, ``rejected`` (strings).
- ``conversational``: TRL's conversational rows, ``prompt`` a list of ``{"role", "content"}`` messages and ``chosen``
  / ``rejected`` lists holding the assistant turn(s); or the implicit-prompt variant without ``prompt``, where
  ``chosen`` and ``rejected`` hold whole conversations and the prompt is the turns they share, up to the last shared
  user turn. A string ``prompt`` is the user's turn before assistant-only ``chosen``/``rejected``, and is passed over
  beside whole conversations, which hold it already (``HuggingFaceH4/ultrafeedback_binarized``).
- ``hh``: Anthropic HH-RLHF transcripts, ``chosen`` and ``rejected`` strings ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``;
  the prompt is their shared start up to the last shared ``"\\n\\nAssistant:"``, each response what follows it (both
  stripped of surrounding whitespace, as are the turns).

Every format but ``pku_saferlhf`` may carry safety labels: ``chosen_safe``, ``rejected_safe`` (bool), ``safer``
(``"chosen"`` or ``"rejected"``; when absent and the two ``*_safe`` labels differ, the safe response is the safer),
and for moderation ``chosen_harm_category`` / ``rejected_harm_category`` (the 19 PKU-SafeRLHF categories, bool
values) with optional ``chosen_severity_level`` / ``rejected_severity_level`` (0-3). Labels are required only by the
views that read them (:func:`label_needs`): ``safety`` (both ``*_safe`` and a known safer response), ``moderation``
(both ``*_safe`` and, outside ``pku_saferlhf``, both harm-category dicts) and ``sft`` with ``sft_responses: safer``.

``columns`` maps the field names above to a file's own (``{"prompt": "question", "chosen": "answer_good"}``);
problems name the file's column (``answer_good``), not the field it stands for.

A normalised row (:func:`normalise_row`) of the chosen/rejected formats is a PKU-SafeRLHF pair: ``prompt``,
``response_0`` (chosen), ``response_1`` (rejected), ``better_response_id`` 0, the labels under their PKU names when
given, and the messages: ``prompt_messages`` (the prompt's ``{"role", "content"}`` turns; a string prompt is one user
turn) and ``response_0_messages`` / ``response_1_messages`` (the responses' turns), for a chat-template path
(``tokenizer.apply_chat_template``) to render instead of the Safe RLHF template.
Multi-turn prompts are rendered so that the Safe RLHF template (``BEGINNING OF CONVERSATION: USER: {prompt}
ASSISTANT:``) continues the conversation turn by turn: ``prompt`` becomes ``"q1 ASSISTANT:a1 USER: q2"``, which the
template turns into ``BEGINNING OF CONVERSATION: USER: q1 ASSISTANT:a1 USER: q2 ASSISTANT:``. Departure from
safe-rlhf's own multi-turn format: it ends an assistant turn with the EOS token's text, here a space separates the
turns (the EOS text differs per tokenizer, and need not even tokenise back to the EOS id). System messages, allowed
only before the first user turn, go first in the user's text, separated by a blank line. Responses with several turns
render the same way after the first assistant turn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lit_safe.data_modules.schemas import (
    PKU_OPTIONAL_FIELDS,
    PKU_REQUIRED_FIELDS,
    PKU_SAFETY_FIELDS,
    check_harm_categories,
    check_pku_saferlhf_row,
    check_severity_level,
    not_an_object,
)
from lit_safe.data_modules.sources import DataValidationError

FORMATS: tuple[str, ...] = ("pku_saferlhf", "prompt_chosen_rejected", "conversational", "hh")
# What each format's rows hold, for the errors that list the accepted formats.
FORMAT_FIELDS: dict[str, str] = {
    "pku_saferlhf": "prompt, response_0, response_1, better_response_id (+ is_response_0_safe, is_response_1_safe, "
                    "safer_response_id)",
    "prompt_chosen_rejected": "prompt, chosen, rejected (strings)",
    "conversational": "chosen, rejected (lists of {role, content} messages) and prompt (a list of messages, or a "
                      "string) or no prompt (whole conversations)",
    "hh": "chosen, rejected (whole '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts), no prompt",
}
# The optional labels of the chosen/rejected formats (a normalised row holds them under their PKU-SafeRLHF names).
LABEL_FIELDS: tuple[str, ...] = (
    "chosen_safe",  # bool -> is_response_0_safe
    "rejected_safe",  # bool -> is_response_1_safe
    "safer",  # "chosen" | "rejected" -> safer_response_id
    "chosen_harm_category",  # the 19 categories -> response_0_harm_category
    "rejected_harm_category",
    "chosen_severity_level",  # 0-3 -> response_0_severity_level
    "rejected_severity_level",
)
# Every field name a column can be mapped to.
FIELD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(
    [*PKU_REQUIRED_FIELDS, *PKU_OPTIONAL_FIELDS, "chosen", "rejected", *LABEL_FIELDS]
))
DETECT_ROWS = 100  # JSON objects read, at most, to find one whose fields fit a format
ROLES = ("system", "user", "assistant")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ASSISTANT = "\n\nAssistant:"
SIDES = (("chosen", 0), ("rejected", 1))

Problems = list[tuple[str, str]]
Message = dict[str, str]


@dataclass(frozen=True)
class LabelNeeds:
    """Which labels a view reads besides the preference.

    Args:
        safety: the ``is_safe`` label of both responses.
        safer: which response is safer.
        categories: the harm categories of both responses (required outside ``pku_saferlhf``; PKU-SafeRLHF rows
            without them, the 2023 release, stay a ``moderation`` view's counted drop).
    """

    safety: bool = False
    safer: bool = False
    categories: bool = False

    @property
    def any_labels(self) -> bool:
        """Whether the view reads any label besides the preference."""
        return self.safety or self.safer or self.categories


def label_needs(view: str, sft_responses: str | None = None) -> LabelNeeds:
    """The labels ``view`` reads (``sft`` reads the safer label with ``sft_responses: safer``)."""
    if view == "safety":
        return LabelNeeds(safety=True, safer=True)
    if view == "moderation":
        return LabelNeeds(safety=True, categories=True)
    if view == "sft" and sft_responses == "safer":
        return LabelNeeds(safer=True)
    return LabelNeeds()


def label_groups(fmt: str, needs: LabelNeeds) -> list[tuple[str, ...]]:
    """The label fields ``needs`` asks of a row in format ``fmt``, in groups: a file whose first row has no field of
    a group has no such labels at all (one error before preparing, :func:`missing_labels`)."""
    if fmt == "pku_saferlhf":
        return [PKU_SAFETY_FIELDS] if needs.safety or needs.safer else []
    groups: list[tuple[str, ...]] = []
    if needs.safety:
        groups.append(("chosen_safe", "rejected_safe"))
    elif needs.safer:
        groups.append(("chosen_safe", "rejected_safe", "safer"))
    if needs.categories:
        groups.append(("chosen_harm_category", "rejected_harm_category"))
    return groups


def missing_labels(row: dict[str, Any], fmt: str, needs: LabelNeeds) -> list[str]:
    """The label fields of every group of :func:`label_groups` of which ``row`` (column-mapped) has none."""
    return [name for group in label_groups(fmt, needs) if all(row.get(f) is None for f in group) for name in group]


# ------------------------------------------------------------------------------------------------------- columns
def check_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """``columns`` (field name -> the file's column name) checked: known field names, distinct non-empty column
    names. Raises ``ValueError`` naming the wrong entry."""
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise ValueError(f"columns must map field names to the file's column names, got {columns!r}")
    for name, column in columns.items():
        if name not in FIELD_NAMES:
            raise ValueError(f"columns: unknown field {name!r}; fields a column can stand for: {list(FIELD_NAMES)}")
        if not isinstance(column, str) or not column:
            raise ValueError(f"columns: {name!r} must name a column (a non-empty string), got {column!r}")
    repeated = sorted({c for c in columns.values() if list(columns.values()).count(c) > 1})
    if repeated:
        raise ValueError(f"columns: the column(s) {repeated} stand for more than one field")
    return dict(columns)


def map_columns(row: Any, columns: Mapping[str, str]) -> Any:
    """``row`` with the file's columns renamed to field names (all at once, so two columns may swap names); a
    field whose column is absent is absent, and a column named like a mapped field but not mapped itself is
    dropped. Not a JSON object: returned as it is."""
    if not columns or not isinstance(row, dict):
        return row
    renamed = set(columns.values()) | set(columns)
    out = {key: value for key, value in row.items() if key not in renamed}
    for name, column in columns.items():
        if column in row:
            out[name] = row[column]
    return out


def column_of(field: str, columns: Mapping[str, str]) -> str:
    """The file's name for a problem's field (``chosen[1].role`` -> ``answer_good[1].role`` when ``chosen`` is
    mapped from ``answer_good``)."""
    head = re.match(r"[^.\[]*", field).group(0)
    return columns[head] + field[len(head):] if head in columns else field


# ----------------------------------------------------------------------------------------------------- detection
def row_formats(row: dict[str, Any]) -> list[str]:
    """The formats whose fields a (column-mapped) row has: none, one, or several (ambiguous)."""
    found = []
    if row.get("response_0") is not None and row.get("response_1") is not None:
        found.append("pku_saferlhf")
    if row.get("chosen") is not None and row.get("rejected") is not None:
        if isinstance(row["chosen"], list):
            found.append("conversational")
        elif row.get("prompt") is not None:
            found.append("prompt_chosen_rejected")
        else:
            found.append("hh")
    return found


def accepted_formats() -> str:
    """The accepted formats and their fields, one per line (for errors)."""
    return "\n".join(f"  {name}: {fields}" for name, fields in FORMAT_FIELDS.items())


def detect_format(rows: Iterable[tuple[str, Any]], columns: Mapping[str, str],
                  source: str) -> tuple[str, str, dict[str, Any]]:
    """The format of a source from its first row whose fields fit exactly one format.

    Rows that are not JSON objects, and up to :data:`DETECT_ROWS` objects whose fields fit no format, are passed over
    (a bad row is then named by validation, like any other).

    Args:
        rows: ``(location, row)`` of the source's training split, in order.
        columns: the column mapping (:func:`check_columns`).
        source: the source as configured, for the error.

    Returns:
        ``(format, location of the row that decided, the row column-mapped)``.

    Raises:
        DataValidationError: the deciding row fits several formats, or no row fits one; the message lists the
            accepted formats and the fields found.
    """
    first: tuple[str, dict[str, Any]] | None = None
    seen = 0
    for where, row in rows:
        if not isinstance(row, dict):
            continue
        mapped = map_columns(row, columns)
        found = row_formats(mapped)
        if len(found) == 1:
            return found[0], where, mapped
        if len(found) > 1:
            raise DataValidationError(
                f"{where}: ambiguous preference format (format: auto): its fields {sorted(mapped)} fit "
                f"{' and '.join(found)}; declare `format` (or rename columns with `columns`). Accepted formats:\n"
                + accepted_formats()
            )
        first = first or (where, mapped)
        seen += 1
        if seen >= DETECT_ROWS:
            break
    if first is None:
        raise DataValidationError(f"{source}: no JSON object among its rows: cannot tell its preference format")
    where, mapped = first
    raise DataValidationError(
        f"{where}: unknown preference format (format: auto): fields found {sorted(mapped)}"
        + (f" (nor do the next {seen - 1} rows fit a format)" if seen > 1 else "")
        + "; accepted formats (fields):\n" + accepted_formats()
        + "\nDeclare `format`, and map other column names with `columns` (e.g. columns: {prompt: question, chosen: "
        "answer_good, rejected: answer_bad})."
    )


# ------------------------------------------------------------------------------------------------------ messages
def _type(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def check_messages(value: Any, field: str, offset: int = 0) -> Problems:
    """Problems of a list of ``{"role", "content"}`` messages (role system/user/assistant, content a string).
    ``offset`` numbers the first message (a slice of a longer list keeps its indices)."""
    if value is None:
        return [(field, "missing required field")]
    if not isinstance(value, list):
        return [(field, f"expected a list of {{role, content}} messages, got {_type(value)}")]
    if not value:
        return [(field, "expected at least one message, got an empty list")]
    problems = []
    for index, message in enumerate(value, start=offset):
        where = f"{field}[{index}]"
        if not isinstance(message, dict):
            problems.append((where, f"expected a {{role, content}} message, got {_type(message)}"))
            continue
        if message.get("role") not in ROLES:
            problems.append((f"{where}.role", f"expected one of {', '.join(ROLES)}, got {message.get('role')!r:.40}"))
        content = message.get("content")
        if content is None:
            problems.append((f"{where}.content", "missing required field"))
        elif not isinstance(content, str):
            problems.append((f"{where}.content", f"expected str, got {_type(content)}"))
    return problems


def _messages(messages: list[dict[str, Any]]) -> list[Message]:
    """Only role and content of each (checked) message."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_prompt_turns(messages: list[Message], field: str, offset: int = 0) -> Problems:
    """A prompt's turns: system messages only first, then a user turn first and last."""
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    if start == len(messages):
        return [(field, "has no user turn")]
    if messages[start]["role"] != "user":
        return [(f"{field}[{offset + start}].role", "expected 'user': the conversation starts with the user's turn "
                                                    "(after any system messages)")]
    for index in range(start, len(messages)):
        if messages[index]["role"] == "system":
            return [(f"{field}[{offset + index}].role", "a system message is allowed only before the first user turn")]
    if messages[-1]["role"] != "user":
        return [(f"{field}[{offset + len(messages) - 1}].role",
                 "expected 'user': the prompt ends with the user turn that the responses answer")]
    return []


def check_response_turns(messages: list[Message], field: str, offset: int = 0) -> Problems:
    """A response's turns: an assistant turn first, no system message."""
    if not messages:
        return [(field, "has no assistant turn after the prompt")]
    if messages[0]["role"] != "assistant":
        return [(f"{field}[{offset}].role", "expected 'assistant': a response starts with the assistant's turn")]
    for index, message in enumerate(messages):
        if message["role"] == "system":
            return [(f"{field}[{offset + index}].role", "a system message is not allowed in a response")]
    return []


def _continued(message: Message) -> str:
    """A later turn, as the Safe RLHF template continues a conversation."""
    if message["role"] == "user":
        return f" USER: {message['content']}"
    return f" ASSISTANT:{message['content']}"


def render_prompt(messages: list[Message]) -> str:
    """The text that goes into the template's ``{prompt}``: the first user turn, then the later turns as the Safe
    RLHF template continues them (``"q1 ASSISTANT:a1 USER: q2"``); leading system messages first, each followed by a
    blank line. A single user turn renders as its content, exactly.

    Args:
        messages: checked prompt turns (:func:`check_prompt_turns`).
    """
    start = 0
    while messages[start]["role"] == "system":
        start += 1
    text = messages[start]["content"] + "".join(_continued(m) for m in messages[start + 1 :])
    return "\n\n".join([*(m["content"] for m in messages[:start]), text])


def render_response(messages: list[Message]) -> str:
    """A response's text after the template's ``ASSISTANT:``: its first assistant turn, then any later turns as the
    Safe RLHF template continues them."""
    return messages[0]["content"] + "".join(_continued(m) for m in messages[1:])


# --------------------------------------------------------------------------------------------------------- rows
def _pair(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> dict[str, Any]:
    return {
        "prompt": render_prompt(prompt),
        "response_0": render_response(chosen),
        "response_1": render_response(rejected),
        "better_response_id": 0,
        "prompt_messages": prompt,
        "response_0_messages": chosen,
        "response_1_messages": rejected,
    }


def _prompt_chosen_rejected(row: dict[str, Any]) -> tuple[dict[str, Any] | None, Problems]:
    problems = []
    for name in ("prompt", "chosen", "rejected"):
        value = row.get(name)
        if value is None:
            problems.append((name, "missing required field"))
        elif not isinstance(value, str):
            hint = " (lists of messages: format conversational)" if isinstance(value, list) else ""
            problems.append((name, f"expected str, got {_type(value)}{hint}"))
    if problems:
        return None, problems
    return _pair([{"role": "user", "content": row["prompt"]}], [{"role": "assistant", "content": row["chosen"]}],
                 [{"role": "assistant", "content": row["rejected"]}]), []


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["role"] == b["role"] and a["content"] == b["content"]


def _conversational(row: dict[str, Any]) -> tuple[dict[str, Any] | None, Problems]:
    problems = check_messages(row.get("chosen"), "chosen") + check_messages(row.get("rejected"), "rejected")
    given = row.get("prompt")
    if given is not None and not isinstance(given, str):
        problems = check_messages(given, "prompt") + problems
    if problems:
        return None, problems
    chosen, rejected = _messages(row["chosen"]), _messages(row["rejected"])
    if isinstance(given, str) and chosen[0]["role"] == "assistant":
        given = [{"role": "user", "content": given}]  # a string prompt before assistant turns: the user's turn
    if isinstance(given, list):  # explicit prompt
        prompt = _messages(given)
        problems = check_prompt_turns(prompt, "prompt")
        problems += check_response_turns(chosen, "chosen") + check_response_turns(rejected, "rejected")
        return (None, problems) if problems else (_pair(prompt, chosen, rejected), [])
    # implicit prompt: the shared turns, up to the last shared user turn
    shared = 0
    while shared < min(len(chosen), len(rejected)) and _same(chosen[shared], rejected[shared]):
        shared += 1
    users = [i for i in range(shared) if chosen[i]["role"] == "user"]
    if not users:
        return None, [("chosen", "shares no user turn with 'rejected': give the prompt as its own field 'prompt', or "
                                 "whole conversations that start with the same user turn(s)")]
    cut = users[-1] + 1
    prompt = chosen[:cut]
    problems = check_prompt_turns(prompt, "chosen")
    problems += check_response_turns(chosen[cut:], "chosen", cut)
    problems += check_response_turns(rejected[cut:], "rejected", cut)
    return (None, problems) if problems else (_pair(prompt, chosen[cut:], rejected[cut:]), [])


def parse_hh(transcript: str) -> list[Message] | None:
    """The turns of an HH transcript (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, the leading blank line optional),
    each stripped of surrounding whitespace; ``None`` when text comes before the first turn."""
    if transcript.startswith(("Human:", "Assistant:")):
        transcript = "\n\n" + transcript
    parts = HH_TURN.split(transcript)
    if parts[0].strip():
        return None
    return [{"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()}
            for i in range(1, len(parts), 2)]


def _hh(row: dict[str, Any]) -> tuple[dict[str, Any] | None, Problems]:
    problems = []
    for name in ("chosen", "rejected"):
        value = row.get(name)
        if value is None:
            problems.append((name, "missing required field"))
        elif not isinstance(value, str):
            problems.append((name, f"expected an HH transcript (str), got {_type(value)}"))
    if problems:
        return None, problems
    chosen, rejected = row["chosen"], row["rejected"]
    cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cut < 0:
        return None, [("chosen", "shares no '\\n\\nAssistant:' turn with 'rejected' (an HH transcript ends with the "
                                 "assistant's turn, after the same conversation in both)")]
    prompt = parse_hh(chosen[:cut])
    if prompt is None:
        return None, [("chosen", "does not start with a '\\n\\nHuman:' turn")]
    problems = check_prompt_turns(prompt, "chosen")
    if problems:  # name the transcript, not an index into turns the file does not list
        return None, [("chosen", problems[0][1])]
    start = cut + len(HH_ASSISTANT)
    return _pair(prompt, [{"role": "assistant", "content": chosen[start:].strip()}],
                 [{"role": "assistant", "content": rejected[start:].strip()}]), []


NORMALISERS = {"prompt_chosen_rejected": _prompt_chosen_rejected, "conversational": _conversational, "hh": _hh}


def _labels(row: dict[str, Any], out: dict[str, Any], needs: LabelNeeds) -> Problems:
    """Check the optional labels of a chosen/rejected row and copy them into ``out`` under their PKU names."""
    problems: Problems = []
    for side, k in SIDES:
        safe = row.get(f"{side}_safe")
        if safe is None:
            if needs.safety:
                problems.append((f"{side}_safe", "missing required field"))
        elif not isinstance(safe, bool):
            problems.append((f"{side}_safe", f"expected bool, got {_type(safe)}"))
        else:
            out[f"is_response_{k}_safe"] = safe
        categories = row.get(f"{side}_harm_category")
        if categories is None:
            if needs.categories:
                problems.append((f"{side}_harm_category", "missing required field"))
        else:
            found = check_harm_categories(categories, f"{side}_harm_category")
            problems += found
            if not found:
                out[f"response_{k}_harm_category"] = categories
        severity = row.get(f"{side}_severity_level")
        if severity is not None:
            found = check_severity_level(severity, f"{side}_severity_level")
            problems += found
            if not found:
                out[f"response_{k}_severity_level"] = severity
    safer = row.get("safer")
    if safer is not None:
        if safer not in ("chosen", "rejected"):
            problems.append(("safer", f"expected 'chosen' or 'rejected', got {_type(safer)}"))
        else:
            out["safer_response_id"] = 0 if safer == "chosen" else 1
    elif out.get("is_response_0_safe") is not None and out.get("is_response_1_safe") is not None:
        if out["is_response_0_safe"] != out["is_response_1_safe"]:
            out["safer_response_id"] = 0 if out["is_response_0_safe"] else 1
    labelled = out.get("is_response_0_safe") is not None and out.get("is_response_1_safe") is not None
    # Two responses labelled alike, without `safer`: a valid row that the safety view cannot order; it drops and counts
    # it (`safer_unknown`). Other readers of the safer response need the field.
    if needs.safer and not problems and "safer_response_id" not in out and not (labelled and needs.safety):
        problems.append(("safer", "missing required field: chosen_safe and rejected_safe do not tell which response "
                                  "is safer (equal or absent), so 'safer' must ('chosen' or 'rejected')"))
    return problems


def normalise_row(row: Any, fmt: str, needs: LabelNeeds | None = None,
                  columns: Mapping[str, str] | None = None) -> tuple[Any, Problems]:
    """Check one row of format ``fmt`` and turn it into the PKU-SafeRLHF pair the views read.

    Args:
        row: the decoded JSON object of one row, with the file's own column names.
        fmt: one of :data:`FORMATS`.
        needs: the labels the view reads (:func:`label_needs`; ``None``: none): required, the others checked when
            present.
        columns: field name -> the file's column name (:func:`check_columns`).

    Returns:
        ``(row, problems)``: when ``problems`` is empty, the normalised row (a ``pku_saferlhf`` row is returned as it
        is, column-mapped); otherwise the row column-mapped, and ``[(field, problem)]`` naming the file's columns.
    """
    columns, needs = columns or {}, needs or LabelNeeds()
    if not isinstance(row, dict):
        return row, not_an_object(row)
    mapped = map_columns(row, columns)
    if fmt == "pku_saferlhf":
        problems = check_pku_saferlhf_row(mapped, safety_labels=needs.safety or needs.safer)
        out: dict[str, Any] | None = mapped
    else:
        out, problems = NORMALISERS[fmt](mapped)
        if out is not None:
            problems = _labels(mapped, out, needs)
    if problems:
        return mapped, [(column_of(field, columns), message) for field, message in problems]
    return out, []


__all__ = [
    "DETECT_ROWS",
    "FIELD_NAMES",
    "FORMATS",
    "FORMAT_FIELDS",
    "LABEL_FIELDS",
    "LabelNeeds",
    "accepted_formats",
    "check_columns",
    "check_messages",
    "column_of",
    "detect_format",
    "label_groups",
    "label_needs",
    "map_columns",
    "missing_labels",
    "normalise_row",
    "parse_hh",
    "render_prompt",
    "render_response",
    "row_formats",
]
