"""``prompt_template: chat`` through preparation and streaming: every text view of PKUSafeRLHFDataModule (sft,
prompts, preference unpacked and packed, preference_pairs for DPO, moderation, predict_file) on conversational rows
(system turns, multi-turn prompts and responses) and synthetic PKU-SafeRLHF rows, with a ChatML and a Llama-3 template
on the tiny tokenizer. Expected ids are computed here with transformers alone: the tokens of
``apply_chat_template`` (whole conversation, or the prompt with its generation prompt) without special tokens; the
labels mask exactly the prompt's tokens."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lit_safe.data_modules.pku_saferlhf import PKUSafeRLHFDataModule
from lit_safe.data_modules.policy import IGNORE_INDEX
from lit_safe.data_modules.synthetic import generate_pku_saferlhf_rows
from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint

MAX_LENGTH = 256


def _conversational_rows(n: int = 24) -> list[dict]:
    """TRL conversational rows: some with a system turn, some with a multi-turn prompt or a multi-turn response,
    replies with whitespace around them (the Llama 3 template trims it)."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"How do I plan task {i} well?"}]
        if i % 3 == 0:
            prompt = [{"role": "system", "content": "Be brief."}, *prompt]
        if i % 4 == 1:
            prompt += [{"role": "assistant", "content": f"Which part of task {i}?"},
                       {"role": "user", "content": "The first part."}]
        chosen = [{"role": "assistant", "content": f" Start with step one of task {i}, then check it.  "}]
        if i % 5 == 2:
            chosen += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then finish."}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant",
                                                                       "content": f"No idea about {i}."}]})
    return rows


@pytest.fixture(scope="module")
def conversational(tmp_path_factory) -> tuple[Path, list[dict]]:
    rows = _conversational_rows()
    path = tmp_path_factory.mktemp("conversational") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path, rows


def _module(tokenizer: str, source, tmp_path, **kwargs) -> PKUSafeRLHFDataModule:
    settings = dict(tokenizer=tokenizer, source=str(source), prompt_template="chat", val_fraction=0.0,
                    test_split=None, num_workers=0, batch_size=4, group_size=1, max_length=MAX_LENGTH,
                    prepared_dir=str(tmp_path / "prepared"))
    settings.update(kwargs)
    return PKUSafeRLHFDataModule(**settings)


def _batches(dm: PKUSafeRLHFDataModule) -> list[dict]:
    dm.prepare()
    dm.setup("fit")
    return list(dm.train_dataloader())


def _chat_ids(tok, messages: list[dict], generation: bool = False) -> list[int]:
    """The ids transformers gives a conversation rendered by the chat template (no special tokens added)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return tok(text, add_special_tokens=False)["input_ids"]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --------------------------------------------------------------------------------------------------- policy views
@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_sft_items_are_the_rendered_conversation_with_the_prompt_masked(kind, conversational, chat_tokenizer_dir,
                                                                       tmp_path):
    source, rows = conversational
    directory = chat_tokenizer_dir(kind)
    tok = AutoTokenizer.from_pretrained(directory)
    dm = _module(directory, source, tmp_path, view="sft")
    seen = []
    for batch in _batches(dm):
        assert set(batch) == {"input_ids", "attention_mask", "labels", "row"}
        for b, index in enumerate(batch["row"].tolist()):
            row = rows[index]
            expected = _chat_ids(tok, row["prompt"] + row["chosen"])  # sft_responses auto: the chosen one
            prompt_length = len(_chat_ids(tok, row["prompt"], generation=True))
            n = int(batch["attention_mask"][b].sum())
            assert batch["input_ids"][b, :n].tolist() == expected
            labels = batch["labels"][b].tolist()
            assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
            assert labels[prompt_length:n] == expected[prompt_length:]
            assert set(labels[n:]) <= {IGNORE_INDEX}
            if kind == "llama3":  # the template's BOS, once
                assert expected.count(tok.bos_token_id) == 1 and expected[0] == tok.bos_token_id
            seen.append(index)
    assert sorted(seen) == list(range(len(rows)))
    assert dm.report.splits["train"].kept == len(rows) and not dm.report.splits["train"].dropped


def test_prompts_view_is_the_generation_prompt_with_its_turns(conversational, chat_tokenizer_dir, tmp_path):
    source, rows = conversational
    directory = chat_tokenizer_dir("chatml")
    tok = AutoTokenizer.from_pretrained(directory)
    seen = 0
    for batch in _batches(_module(directory, source, tmp_path, view="prompts")):
        assert set(batch) == {"input_ids", "attention_mask", "row", "prompt_turns"}
        for b, index in enumerate(batch["row"].tolist()):
            n = int(batch["attention_mask"][b].sum())
            assert batch["attention_mask"][b, -n:].all()  # left padding
            assert batch["input_ids"][b, -n:].tolist() == _chat_ids(tok, rows[index]["prompt"], generation=True)
            assert batch["prompt_turns"][b] == rows[index]["prompt"]
            seen += 1
    assert seen == len(rows)


def test_dpo_pairs_share_the_prompt_and_mask_it(conversational, chat_tokenizer_dir, tmp_path):
    source, rows = conversational
    directory = chat_tokenizer_dir("llama3")
    tok = AutoTokenizer.from_pretrained(directory)
    seen = 0
    for batch in _batches(_module(directory, source, tmp_path, view="preference_pairs")):
        count = batch["row"].numel()
        for b, index in enumerate(batch["row"].tolist()):
            row = rows[index]
            prompt_length = len(_chat_ids(tok, row["prompt"], generation=True))
            for j, response in ((b, row["chosen"]), (count + b, row["rejected"])):
                expected = _chat_ids(tok, row["prompt"] + response)
                n = int(batch["attention_mask"][j].sum())
                assert batch["input_ids"][j, :n].tolist() == expected
                assert batch["labels"][j, :prompt_length].eq(IGNORE_INDEX).all()
                assert batch["labels"][j, prompt_length:n].tolist() == expected[prompt_length:]
            seen += 1
    assert seen == len(rows)


# ------------------------------------------------------------------------------------------ score model views
@pytest.mark.parametrize("pack_pairs", [False, True])
def test_reward_pairs_are_the_rendered_conversations(pack_pairs, conversational, chat_tokenizer_dir, tmp_path):
    source, rows = conversational
    directory = chat_tokenizer_dir("chatml")
    tok = AutoTokenizer.from_pretrained(directory)
    end = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    seen = 0
    for batch in _batches(_module(directory, source, tmp_path, view="preference", pack_pairs=pack_pairs)):
        count = batch["row"].numel()
        for b, index in enumerate(batch["row"].tolist()):
            row = rows[index]
            chosen = _chat_ids(tok, row["prompt"] + row["chosen"])
            rejected = _chat_ids(tok, row["prompt"] + row["rejected"])
            assert chosen[-len(end):] == rejected[-len(end):] == end  # the score is read at the end of the turn
            if not pack_pairs:
                for j, expected in ((b, chosen), (count + b, rejected)):
                    n = int(batch["attention_mask"][j].sum())
                    assert batch["input_ids"][j, :n].tolist() == expected
            else:
                prompt_length = len(_chat_ids(tok, row["prompt"], generation=True))
                shared = next(k for k in range(len(chosen)) if chosen[k] != rejected[k])
                assert shared >= prompt_length  # the prompt is computed once
                n = int(batch["attention_mask"][b].sum())
                assert batch["input_ids"][b, :n].tolist() == chosen + rejected[shared:]
                assert batch["end_index"][b].tolist() == [len(chosen) - 1, n - 1]
            seen += 1
    assert seen == len(rows)


def test_moderation_items_are_the_rendered_conversation(chat_tokenizer_dir, tmp_path):
    directory = chat_tokenizer_dir("chatml")
    tok = AutoTokenizer.from_pretrained(directory)
    rows = generate_pku_saferlhf_rows(40, seed=42)  # the synthetic source's training rows (nothing held out)
    dm = _module(directory, "synthetic", tmp_path, view="moderation", synthetic_rows=40)
    seen = 0
    for batch in _batches(dm):
        for b, (index, k) in enumerate(zip(batch["row"].tolist(), batch["response"].tolist())):
            row = rows[index]
            expected = _chat_ids(tok, _user(row["prompt"]) + _assistant(row[f"response_{k}"]))
            n = int(batch["attention_mask"][b].sum())
            assert batch["input_ids"][b, :n].tolist() == expected
            seen += 1
    assert seen == dm.report.splits["train"].kept > 0


def test_predict_file_reads_lines_as_the_view_does(chat_tokenizer_dir, conversational, tmp_path):
    directory = chat_tokenizer_dir("llama3")
    tok = AutoTokenizer.from_pretrained(directory)
    lines = [{"prompt": "How do I bake bread?", "response": "Knead it. "}, {"prompt": "hi", "response": "hello"}]
    path = tmp_path / "predict.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    dm = _module(directory, conversational[0], tmp_path, view="preference")
    batch = next(iter(dm.prediction_loader(path)))
    for b, line in enumerate(lines):
        n = int(batch["attention_mask"][b].sum())
        expected = _chat_ids(tok, _user(line["prompt"]) + _assistant(line["response"]))
        assert batch["input_ids"][b, :n].tolist() == expected


# ------------------------------------------------------------------------------------------ settings and errors
def test_chat_needs_a_tokenizer_with_a_chat_template(tmp_path):
    with pytest.raises(ValueError, match="tokenizer 'tiny' has none"):
        _module("tiny", "synthetic", tmp_path, view="sft")
    with pytest.raises(ValueError, match=r"does not contain '\{prompt\}'"):
        _module("tiny", "synthetic", tmp_path, view="sft", prompt_template="USER: ASSISTANT:")


def test_the_fingerprint_covers_the_chat_template(chat_tokenizer_dir, tmp_path):
    default = PKUSafeRLHFDataModule(tokenizer="tiny", prepared_dir=str(tmp_path / "prepared"))
    named = PKUSafeRLHFDataModule(tokenizer="tiny", prepared_dir=str(tmp_path / "prepared"),
                                  prompt_template="safe_rlhf")
    assert named.prepared_location() == default.prepared_location()  # the name is the default's template
    directory = chat_tokenizer_dir("chatml")
    other = load_tokenizer(directory)
    other.chat_template = other.chat_template.replace("<|im_end|>'", "<|im_end|>\n'")  # a newline more per turn
    assert other.chat_template != load_tokenizer(directory).chat_template
    other_dir = tmp_path / "other_template"
    other.save_pretrained(other_dir)
    assert tokenizer_fingerprint(load_tokenizer(str(other_dir))) == tokenizer_fingerprint(load_tokenizer(directory))
    chat = _module(directory, "synthetic", tmp_path)
    assert chat.prepared_location() != _module(str(other_dir), "synthetic", tmp_path).prepared_location()
    assert chat.prepared_location() != _module(directory, "synthetic", tmp_path,
                                               prompt_template="safe_rlhf").prepared_location()
