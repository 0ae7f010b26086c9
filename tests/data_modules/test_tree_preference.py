"""The tree preference format through validation, litdata preparation and streaming (TreePreferenceDataModule)."""

import json

import numpy as np
import pytest

from lit_safe.data_modules.sources import DataValidationError
from lit_safe.data_modules.tree_preference import TreePreferenceDataModule
from lit_safe.models.text import SAFE_RLHF_TEMPLATE, encode_with_eos, format_prompt
from lit_safe.trees import ResponseTree, label_pairs, sample_pairs


def words_tree(index: int) -> ResponseTree:
    """Depth 2, branching 3: responses made of words, sharing their first sentence with their siblings."""
    tree = ResponseTree(f"t{index}", f"How do I plan task number {index} well?", 12)
    for a in range(3):
        mid = tree.add_child(0, [a], finished=False)
        for b in range(3):
            leaf = tree.add_child(mid, [b], finished=True)
            tree.nodes[leaf].text = f"Opening {a} for task {index}. Step {b + 1}: do part {b} carefully today."
    return tree


@pytest.fixture
def rows():
    trees = [words_tree(i) for i in range(6)]

    def gold(prompts, responses):
        return [float(r.count("Step 3")) + 0.1 * r.count("Opening 2") for r in responses]

    def cost(prompts, responses):
        return [1.0 if "part 0" in r else -1.0 for r in responses]

    return label_pairs(sample_pairs("tree", trees, [], budget=30, seed=0), gold, seed=0, beta=None, cost=cost,
                       cost_beta=None)


def write(rows, path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def module(path, tmp_path, **kwargs):
    settings = dict(tokenizer="tiny", source=str(path), val_fraction=0.0, test_split=None, num_workers=0,
                    batch_size=4, group_size=1, prepared_dir=str(tmp_path / "prepared"), max_length=128)
    settings.update(kwargs)
    return TreePreferenceDataModule(**settings)


def test_the_format_round_trips_through_prepare_and_streaming(rows, tmp_path, tiny_tokenizer):
    data = module(write(rows, tmp_path / "pairs.jsonl"), tmp_path)
    report = data.prepare()
    assert report.splits["train"].rows_read == 30 and report.splits["train"].kept == 30
    data.setup("fit")
    seen = []
    for batch in data.train_dataloader():
        chosen, rejected = batch["input_ids"].chunk(2)
        c_mask, r_mask = batch["attention_mask"].chunk(2)
        for i, row_index in enumerate(batch["row"].tolist()):
            row = rows[row_index]
            better = row[f"response_{row['better_response_id']}"]
            worse = row[f"response_{1 - row['better_response_id']}"]
            expected, _ = encode_with_eos(tiny_tokenizer, [format_prompt(row["prompt"], SAFE_RLHF_TEMPLATE) + better,
                                                           format_prompt(row["prompt"], SAFE_RLHF_TEMPLATE) + worse],
                                          128)
            assert chosen[i][c_mask[i].bool()].tolist() == expected[0].tolist()
            assert rejected[i][r_mask[i].bool()].tolist() == expected[1].tolist()
            assert batch["lca_depth"][i].item() == row["lca_depth"]
            seen.append(row_index)
    assert sorted(seen) == list(range(30))  # every pair once per epoch


def test_a_chat_template_renders_tree_pairs(rows, tmp_path, chat_tokenizer_dir):
    from transformers import AutoTokenizer

    directory = chat_tokenizer_dir("chatml")
    tok = AutoTokenizer.from_pretrained(directory)
    data = module(write(rows, tmp_path / "pairs.jsonl"), tmp_path, tokenizer=directory, prompt_template="chat")
    data.prepare()
    data.setup("fit")
    seen = 0
    for batch in data.train_dataloader():
        chosen, rejected = batch["input_ids"].chunk(2)
        c_mask, r_mask = batch["attention_mask"].chunk(2)
        for i, row_index in enumerate(batch["row"].tolist()):
            row = rows[row_index]
            for ids, mask, k in ((chosen, c_mask, row["better_response_id"]),
                                 (rejected, r_mask, 1 - row["better_response_id"])):
                text = tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                                {"role": "assistant", "content": row[f"response_{k}"]}],
                                               tokenize=False)
                assert ids[i][mask[i].bool()].tolist() == tok(text, add_special_tokens=False)["input_ids"]
            seen += 1
    assert seen == 30


def test_the_safety_view_reads_the_cost_labels(rows, tmp_path):
    data = module(write(rows, tmp_path / "pairs.jsonl"), tmp_path, view="safety")
    data.prepare()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    for i, row_index in enumerate(batch["row"].tolist()):
        row = rows[row_index]
        unsafer = 1 - row["safer_response_id"]
        assert batch["unsafer_sign"][i].item() == (-1 if row[f"is_response_{unsafer}_safe"] else 1)
        assert batch["safer_sign"][i].item() == (-1 if row[f"is_response_{1 - unsafer}_safe"] else 1)


def test_bad_rows_are_named_or_counted(rows, tmp_path):
    bad = [dict(r) for r in rows]
    bad[3]["better_response_id"] = 2
    del bad[7]["response_1"]
    bad[9]["lca_depth"] = -1
    bad[11]["topology"] = "forest"
    path = write(bad, tmp_path / "bad.jsonl")
    with pytest.raises(DataValidationError) as err:
        module(path, tmp_path).prepare()
    message = str(err.value)
    assert "4 invalid row(s)" in message
    assert "line 4: field 'better_response_id': expected 0 or 1, got 2" in message
    assert "line 8: field 'response_1': missing required field" in message
    assert "line 10: field 'lca_depth'" in message and "line 12: field 'topology'" in message
    report = module(path, tmp_path, on_bad_row="skip").prepare()
    assert report.splits["train"].rows_read == 30 and report.splits["train"].kept == 26
    assert sum(report.splits["train"].dropped.values()) == 4


def test_preference_rows_without_safety_labels_train_the_reward_view_only(rows, tmp_path):
    plain = [{k: v for k, v in r.items() if not k.startswith(("safer", "is_response", "gold_cost"))} for r in rows]
    path = write(plain, tmp_path / "plain.jsonl")
    assert module(path, tmp_path).prepare().splits["train"].kept == 30
    with pytest.raises(DataValidationError, match="safer_response_id': missing required field"):
        module(path, tmp_path, view="safety").prepare()


def test_held_out_splits_keep_a_tree_together(tmp_path):
    trees = [words_tree(i) for i in range(40)]
    rows = label_pairs(sample_pairs("tree", trees, [], budget=160, seed=0), lambda p, r: [0.0] * len(r), seed=0)
    data = module(write(rows, tmp_path / "pairs.jsonl"), tmp_path, val_fraction=0.2)
    data.prepare()
    data.setup("fit")
    # the carved split is chosen by a hash of the prompt, and every pair of a tree shares its prompt
    val_prompts = {rows[i]["prompt"] for b in data._loader("val", train=False) for i in b["row"].tolist()}
    train_prompts = {rows[i]["prompt"] for b in data._loader("train", train=False) for i in b["row"].tolist()}
    assert val_prompts and not val_prompts & train_prompts
    assert np.isclose(len(val_prompts) / 40, 0.2, atol=0.15)
