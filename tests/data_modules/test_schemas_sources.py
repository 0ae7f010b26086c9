"""Tests of the PKU-SafeRLHF row checks (schemas) and of the local row readers (sources), on real rows."""

import copy
import gzip
import json
from pathlib import Path

import pytest

from lit_safe.data_modules import schemas, sources
from lit_safe.data_modules.schemas import (
    PKU_HARM_CATEGORIES,
    PKU_REQUIRED_FIELDS,
    check_pku_saferlhf_row,
    pku_label_notes,
    response_sha256,
)
from lit_safe.data_modules.sources import DataValidationError


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def real_rows(pku_real_file) -> list[dict]:
    rows = _rows(pku_real_file)
    assert len(rows) == 200
    return rows


@pytest.fixture
def real_row(real_rows) -> dict:
    return copy.deepcopy(real_rows[0])


# ------------------------------------------------------------------------------------------------------- schemas
def test_all_real_rows_pass(real_rows):
    for index, row in enumerate(real_rows):
        assert check_pku_saferlhf_row(row) == [], f"real row {index} rejected"
        # the documented hash convention holds on real data
        for k in (0, 1):
            assert row[f"response_{k}_sha256"] == response_sha256(row["prompt"], row[f"response_{k}"])
    assert list(real_rows[0]["response_0_harm_category"]) == list(PKU_HARM_CATEGORIES)


def _only(problems: list[tuple[str, str]]) -> tuple[str, str]:
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("name", sorted(PKU_REQUIRED_FIELDS))
def test_missing_required_field(real_row, name):
    del real_row[name]
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == name
    assert "missing" in message


def test_none_counts_as_missing(real_row):
    real_row["response_1"] = None
    assert _only(check_pku_saferlhf_row(real_row)) == ("response_1", "missing required field")


def test_str_for_bool(real_row):
    real_row["is_response_0_safe"] = "true"
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "is_response_0_safe"
    assert "expected bool" in message and "str" in message


def test_int_for_bool(real_row):
    real_row["is_response_1_safe"] = 1
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "is_response_1_safe"
    assert "expected bool" in message and "int" in message


@pytest.mark.parametrize("name", ["better_response_id", "safer_response_id", "response_0_severity_level"])
def test_bool_is_not_an_int(real_row, name):
    real_row[name] = True
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == name
    assert "expected int" in message and "bool" in message


def test_str_for_str_field_is_checked(real_row):
    real_row["prompt"] = 17
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "prompt" and "expected str" in message


def test_better_response_id_out_of_range(real_row):
    real_row["better_response_id"] = 2
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "better_response_id"
    assert "0 or 1" in message and "2" in message


def test_safer_response_id_negative(real_row):
    real_row["safer_response_id"] = -1
    field, _ = _only(check_pku_saferlhf_row(real_row))
    assert field == "safer_response_id"


def test_severity_out_of_range(real_row):
    real_row["response_1_severity_level"] = 4
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_1_severity_level"
    assert "0-3" in message and "4" in message


def test_harm_category_unknown_key(real_row):
    real_row["response_0_harm_category"]["Jaywalking"] = False
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_0_harm_category"
    assert "unknown" in message and "Jaywalking" in message


def test_harm_category_missing_key(real_row):
    del real_row["response_1_harm_category"]["Animal Abuse"]
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_1_harm_category"
    assert "missing" in message and "Animal Abuse" in message


def test_harm_category_non_bool_value(real_row):
    real_row["response_0_harm_category"]["Violence"] = 1
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_0_harm_category"
    assert "non-boolean" in message and "Violence" in message


def test_harm_category_not_a_dict(real_row):
    real_row["response_0_harm_category"] = ["Violence"]
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_0_harm_category" and "expected dict" in message


def test_wrong_sha256(real_row):
    real_row["response_1_sha256"] = response_sha256(real_row["prompt"], real_row["response_0"])
    field, message = _only(check_pku_saferlhf_row(real_row))
    assert field == "response_1_sha256"
    assert "sha256" in message


def test_edited_response_breaks_its_sha256(real_row):
    real_row["response_0"] += " "
    assert _only(check_pku_saferlhf_row(real_row))[0] == "response_0_sha256"


def test_not_an_object():
    assert _only(check_pku_saferlhf_row(["prompt"]))[0] == "<row>"


def test_v0_row_with_seven_fields_passes(real_rows):
    for row in real_rows[:20]:
        v0 = {name: row[name] for name in PKU_REQUIRED_FIELDS}
        assert len(v0) == 7
        assert check_pku_saferlhf_row(v0) == []
    # and a v0 row still gets its required fields checked
    v0["better_response_id"] = 5
    assert _only(check_pku_saferlhf_row(v0))[0] == "better_response_id"


def test_label_notes(real_rows):
    # the real sample is consistent: no notes
    assert all(pku_label_notes(row) == [] for row in real_rows)
    # a row with exactly one safe response: label the unsafe one as the safer
    row = next(r for r in real_rows if r["is_response_0_safe"] != r["is_response_1_safe"])
    row = copy.deepcopy(row)
    unsafe = 0 if not row["is_response_0_safe"] else 1
    assert "safety_label_contradiction" not in pku_label_notes(row)
    row["safer_response_id"] = unsafe
    assert check_pku_saferlhf_row(row) == []  # consistent types: not a schema problem, only a note
    assert pku_label_notes(row) == ["safety_label_contradiction"]


def test_label_notes_severity_and_categories(real_rows):
    row = copy.deepcopy(next(r for r in real_rows if r["is_response_0_safe"]))
    row["response_0_severity_level"] = 2
    assert pku_label_notes(row) == ["is_safe_vs_severity"]
    row["response_0_severity_level"] = 0
    row["response_0_harm_category"]["Cybercrime"] = True
    assert pku_label_notes(row) == ["is_safe_vs_categories"]


# ------------------------------------------------------------------------------------------------------- sources
def _write_jsonl(path: Path, rows: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def test_read_jsonl(tmp_path, real_rows):
    path = _write_jsonl(tmp_path / "rows.jsonl", real_rows[:5])
    read = list(sources.read_file(path))
    assert [row for _, row in read] == real_rows[:5]
    assert [where for where, _ in read] == [f"{path}: line {n}" for n in range(1, 6)]


def test_read_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path, real_rows):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(real_rows[0]) + "\n\n" + json.dumps(real_rows[1]) + "\n")
    read = list(sources.read_file(path))
    assert [where for where, _ in read] == [f"{path}: line 1", f"{path}: line 3"]


def test_read_real_file(pku_real_file, real_rows):
    read = list(sources.read_file(pku_real_file))
    assert [row for _, row in read] == real_rows
    assert read[-1][0] == f"{pku_real_file}: line 200"


def test_read_json_array(tmp_path, real_rows):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(real_rows[:4]))
    read = list(sources.read_file(path))
    assert [row for _, row in read] == real_rows[:4]
    assert [where for where, _ in read] == [f"{path}: row {n}" for n in range(4)]


def test_read_json_gz_array(tmp_path, real_rows):
    path = tmp_path / "rows.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(real_rows[:3], f)
    assert [row for _, row in sources.read_file(path)] == real_rows[:3]


def test_read_jsonl_gz(tmp_path, real_rows):
    path = _write_jsonl(tmp_path / "rows.jsonl.gz", real_rows[:6], opener=gzip.open)
    read = list(sources.read_file(path))
    assert [row for _, row in read] == real_rows[:6]
    assert read[2][0] == f"{path}: line 3"


def test_read_parquet(tmp_path, real_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(real_rows[:7]), path)
    read = list(sources.read_file(path))
    assert [row for _, row in read] == real_rows[:7]
    assert [where for where, _ in read] == [f"{path}: row {n}" for n in range(7)]
    # types survive the round trip, harm categories included (as dicts with bool values)
    assert all(check_pku_saferlhf_row(row) == [] for _, row in read)


def test_parquet_is_read_batch_by_batch_across_row_groups(tmp_path, real_rows, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(real_rows[:11]), path, row_group_size=4)
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 3)
    read = list(sources.read_file(path))
    assert [row for _, row in read] == real_rows[:11]
    assert [where for where, _ in read] == [f"{path}: row {n}" for n in range(11)]


def test_jsonl_lines_travel_undecoded_and_decode_as_read_file_does(tmp_path, real_rows):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(real_rows[0]).encode() + b"\n\n  \n" + b'{"prompt": "\xff"}\n'
                     + json.dumps(real_rows[1]).encode() + b"\n" + b'{"prompt": "\\udc80"}\n')
    lines = list(sources.read_lines(path))
    assert [where for where, _ in lines] == [f"{path}: line {n}" for n in (1, 4, 5, 6)]
    assert all(isinstance(raw, bytes) for _, raw in lines)
    parsed = [(where, sources.parse_line(raw)) for where, raw in lines]
    assert parsed == list(sources.read_file(path))
    assert parsed[0][1] == real_rows[0] and parsed[2][1] == real_rows[1]
    assert "not valid UTF-8: byte 0xff" in parsed[1][1].problem
    assert "lone UTF-16 surrogate" in parsed[3][1].problem


def test_invalid_json_line_names_file_and_line(tmp_path, real_rows):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(real_rows[0]) + "\n" + json.dumps(real_rows[1]) + "\n{not json\n")
    reader = sources.read_file(path)
    assert next(reader)[1] == real_rows[0]
    assert next(reader)[1] == real_rows[1]
    where, row = next(reader)  # a bad row in its place (named under on_bad_row: error, dropped and counted by skip)
    assert where == f"{path}: line 3"
    assert isinstance(row, sources.UndecodableRow) and row.problem.startswith("invalid JSON")
    assert schemas.check_pku_saferlhf_row(row) == [("<row>", row.problem)]


def test_invalid_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"prompt": "x"},')
    with pytest.raises(DataValidationError, match="bad.json"):
        list(sources.read_file(path))


def test_json_object_instead_of_array(tmp_path, real_rows):
    path = tmp_path / "object.json"
    path.write_text(json.dumps(real_rows[0]))
    with pytest.raises(DataValidationError) as err:
        list(sources.read_file(path))
    assert str(path) in str(err.value) and "array" in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "train.jsonl"
    with pytest.raises(FileNotFoundError) as err:
        list(sources.read_file(path))
    assert str(path) in str(err.value)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt\nx\n")
    assert not sources.is_data_file(path)
    with pytest.raises(DataValidationError, match="unsupported"):
        list(sources.read_file(path))


def test_local_splits(tmp_path, real_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_jsonl(tmp_path / "train.jsonl", real_rows[:3])
    pq.write_table(pa.Table.from_pylist(real_rows[3:5]), tmp_path / "test.parquet")
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / "val.jsonl").mkdir()  # a directory is not a split file
    splits = sources.local_splits(tmp_path)
    assert splits == {"test": tmp_path / "test.parquet", "train": tmp_path / "train.jsonl"}
    assert [row for _, row in sources.read_file(splits["test"])] == real_rows[3:5]


def test_local_splits_two_files_for_one_split(tmp_path, real_rows):
    _write_jsonl(tmp_path / "train.jsonl", real_rows[:1])
    (tmp_path / "train.json").write_text(json.dumps(real_rows[:1]))
    with pytest.raises(DataValidationError, match="train"):
        sources.local_splits(tmp_path)


# ------------------------------------------------------------------------------------ safety labels when needed
def test_safety_labels_are_required_only_when_asked(real_rows):
    """A row without the safety labels (PKU-SafeRLHF-single-dimension) is valid for views that do not read them; the
    labels it does carry are still checked."""
    unlabelled = {k: v for k, v in real_rows[0].items() if k not in schemas.PKU_SAFETY_FIELDS}
    assert check_pku_saferlhf_row(unlabelled, safety_labels=False) == []
    assert [field for field, _ in check_pku_saferlhf_row(unlabelled)] == list(schemas.PKU_SAFETY_FIELDS)
    assert check_pku_saferlhf_row({**unlabelled, "is_response_1_safe": "no"}, safety_labels=False) == [
        ("is_response_1_safe", "expected bool, got str 'no'")]
    assert check_pku_saferlhf_row({**unlabelled, "safer_response_id": 2}, safety_labels=False) == [
        ("safer_response_id", "expected 0 or 1, got 2")]
    # the preference label is always required
    del unlabelled["better_response_id"]
    assert check_pku_saferlhf_row(unlabelled, safety_labels=False) == [("better_response_id", "missing required field")]


def test_label_notes_skip_labels_a_row_lacks(real_rows):
    row = copy.deepcopy(next(r for r in real_rows if r["is_response_0_safe"] != r["is_response_1_safe"]))
    row["safer_response_id"] = 0 if not row["is_response_0_safe"] else 1  # a contradiction, when labelled
    assert pku_label_notes(row) == ["safety_label_contradiction"]
    del row["is_response_1_safe"]
    assert pku_label_notes(row) == []  # nothing to compare the safer label with
    row["response_0_severity_level"] = 0 if not row["is_response_0_safe"] else 2
    assert pku_label_notes(row) == ["is_safe_vs_severity"]  # response 0 still has its own label
    del row["is_response_0_safe"], row["safer_response_id"]
    assert pku_label_notes(row) == []
