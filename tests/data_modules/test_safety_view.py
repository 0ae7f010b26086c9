"""The safety view of PKU-SafeRLHF: (less safe, safer) pairs with cost signs, checked against the raw rows."""

import json

import numpy as np
from litdata import StreamingDataset

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.models.text import SAFE_RLHF_TEMPLATE, encode_with_eos


def _items(location: str, split: str) -> list[dict]:
    dataset = StreamingDataset(f"{location}/{split}", shuffle=False)
    return [dataset[i] for i in range(len(dataset))]


def test_real_rows_give_ordered_pairs_and_signs(pku_real_file, tmp_path, tiny_tokenizer):
    rows = [json.loads(line) for line in pku_real_file.read_text().splitlines()]
    data = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(pku_real_file), view="safety", val_fraction=0.1,
                                 test_fraction=0.1, num_workers=0, prepared_dir=str(tmp_path))
    report = data.prepare()
    assert sum(s.kept for s in report.splits.values()) == len(rows)  # the real sample has no contradictions
    items = [i for split in report.splits for i in _items(data.prepared_location(), split)]
    assert sorted(int(i["row"]) for i in items) == list(range(len(rows)))

    # signs counted from the raw file: +1 for every response labelled unsafe
    raw_unsafe = sum((not r["is_response_0_safe"]) + (not r["is_response_1_safe"]) for r in rows)
    assert sum((int(i["unsafer_sign"]) == 1) + (int(i["safer_sign"]) == 1) for i in items) == raw_unsafe
    for item in items:
        row = rows[int(item["row"])]
        safer = row["safer_response_id"]
        assert int(item["safer_sign"]) == (-1 if row[f"is_response_{safer}_safe"] else 1)
        assert int(item["unsafer_sign"]) == (-1 if row[f"is_response_{1 - safer}_safe"] else 1)
        prompt = SAFE_RLHF_TEMPLATE.replace("{prompt}", row["prompt"])
        (expected_safer, expected_unsafer), _ = encode_with_eos(
            tiny_tokenizer, [prompt + row[f"response_{safer}"], prompt + row[f"response_{1 - safer}"]], 512
        )
        assert np.array_equal(item["safer"], expected_safer)
        assert np.array_equal(item["unsafer"], expected_unsafer)


def test_self_contradicting_rows_are_dropped_and_counted(pku_real_file, tmp_path):
    rows = [json.loads(line) for line in pku_real_file.read_text().splitlines()][:40]
    mixed = next(i for i, r in enumerate(rows) if r["is_response_0_safe"] != r["is_response_1_safe"])
    bad = dict(rows[mixed])
    bad["safer_response_id"] = 0 if bad["is_response_1_safe"] else 1  # point at the unsafe one: contradiction
    rows[mixed] = bad
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(path), view="safety", val_fraction=0.0,
                                 test_fraction=0.0, num_workers=0, prepared_dir=str(tmp_path / "prepared"))
    train = data.prepare().splits["train"]
    assert train.dropped["safety_label_contradiction"] == 1
    assert train.notes["safety_label_contradiction"] == 1  # also noted by the row checks
    assert train.kept == 39
    # the preference view keeps that row: its helpfulness label is fine
    preference = PKUSafeRLHFDataModule(tokenizer="tiny", source=str(path), val_fraction=0.0, test_fraction=0.0,
                                       num_workers=0, prepared_dir=str(tmp_path / "prepared"))
    assert preference.prepare().splits["train"].kept == 40


def test_safety_batches_carry_signs_unpacked_and_packed(tmp_path):
    for pack in (False, True):
        data = PKUSafeRLHFDataModule(tokenizer="tiny", view="safety", synthetic_rows=200, batch_size=8,
                                     num_workers=0, pack_pairs=pack, prepared_dir=str(tmp_path))
        data.setup("fit")
        batch = next(iter(data.train_dataloader()))
        assert batch["unsafer_sign"].shape == batch["safer_sign"].shape == (8,)
        assert set(batch["unsafer_sign"].tolist()) <= {-1, 1}
        # the safer response is never labelled unsafe while the less safe one is labelled safe
        assert not ((batch["safer_sign"] == 1) & (batch["unsafer_sign"] == -1)).any()
        rows = 8 if pack else 16
        assert batch["input_ids"].shape[0] == rows
