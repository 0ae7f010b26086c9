"""The chat-template text format (``prompt_template: chat``) of lit_safe.models.text, on the tiny preset tokenizer
given a ChatML template and a Llama-3 template (Meta-Llama-3-8B-Instruct's own, which trims the content and writes
BOS): the end-of-turn text, exact prompt/response boundaries (the concatenated ids are the ids of the whole rendered
conversation; the prompt ids are what generation starts from), truncation, stop tokens, and the errors."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

from lit_safe.models.text import (
    CHAT,
    SAFE_RLHF_TEMPLATE,
    Turns,
    chat_turns,
    check_template,
    conversations,
    encode_conversations,
    encode_prompt_response,
    encode_prompts,
    encode_with_eos,
    end_ids,
    end_of_turn,
    format_prompt,
    render_chat,
    resolve_template,
    stop_token_ids,
    template_setting,
)
from lit_safe.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def chat(request, chat_tokenizer_dir):
    """(kind, tokenizer) for each template, loaded back from its saved directory as a model's tokenizer is."""
    return request.param, load_tokenizer(chat_tokenizer_dir(request.param))


# (prompt turns, response turns) as the chosen/rejected formats give them
CONVERSATIONS = [
    ([{"role": "user", "content": "How do I bake bread?"}],
     [{"role": "assistant", "content": "Mix flour, water, salt and yeast.\n\nThen bake it."}]),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "ünïcödé, 2 spaces  here?"}],
     [{"role": "assistant", "content": "yes"}, {"role": "user", "content": "and?"},
      {"role": "assistant", "content": "done"}]),
    ([{"role": "user", "content": "  padded question  "}], [{"role": "assistant", "content": " padded answer \n"}]),
]


def _whole(tokenizer, prompt, response) -> list[int]:
    """The ids of the whole rendered conversation, as transformers tokenises a chat."""
    text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _generation_prompt(tokenizer, prompt) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------- the template
def test_end_of_turn_is_what_the_template_writes_after_a_reply(chat):
    kind, tok = chat
    assert end_of_turn(tok) == {"chatml": "<|im_end|>\n", "llama3": "<|eot_id|>"}[kind]
    last = tok.convert_tokens_to_ids("<|im_end|>" if kind == "chatml" else "<|eot_id|>")
    assert end_ids(tok, CHAT) == ([last, tok("\n", add_special_tokens=False)["input_ids"][0]] if kind == "chatml"
                                  else [last])
    assert end_ids(tok, SAFE_RLHF_TEMPLATE) == [tok.eos_token_id]
    assert stop_token_ids(tok, CHAT) == [tok.eos_token_id, last]  # generation stops at the turn's end
    assert stop_token_ids(tok, SAFE_RLHF_TEMPLATE) == [tok.eos_token_id]


def test_a_plain_text_end_is_not_a_stop_token(tmp_path):
    tok = load_tokenizer("tiny")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}assistant: {% endif %}"
    assert end_of_turn(tok) == "\n"
    assert stop_token_ids(tok, CHAT) == [tok.eos_token_id]  # stopping at every newline would cut answers


def test_template_names_and_errors(tiny_tokenizer):
    assert resolve_template("safe_rlhf") == SAFE_RLHF_TEMPLATE
    assert resolve_template("Q: {prompt} A:") == "Q: {prompt} A:"
    assert format_prompt("hi", "safe_rlhf") == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:"
    with pytest.raises(ValueError, match=r"does not contain '\{prompt\}'.*safe_rlhf, chat"):
        resolve_template("USER: ASSISTANT:")
    with pytest.raises(ValueError, match="tokenizer 'tiny' has none"):
        check_template("chat", tiny_tokenizer)
    with pytest.raises(ValueError, match="use render_prompts"):
        format_prompt("hi", "chat")
    assert template_setting("safe_rlhf", tiny_tokenizer) == SAFE_RLHF_TEMPLATE  # the default's fingerprint


def test_template_setting_of_chat_is_the_tokenizers_template(chat, chat_templates):
    kind, tok = chat
    assert check_template("chat", tok) == CHAT
    assert template_setting("chat", tok) == {"chat": chat_templates[kind][0]}


def test_a_template_that_changes_the_prompt_once_a_reply_follows_is_refused(tmp_path):
    tok = load_tokenizer("tiny")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}ASSISTANT> {% endif %}"
    tok.name_or_path = "odd-template"
    with pytest.raises(ValueError, match="tokenizer 'odd-template' renders the prompt.*cannot be masked exactly"):
        render_chat(tok, ["hi"], ["hello"])


def test_turns_read_as_their_text_and_render_as_their_messages():
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}]
    prompt = Turns("q1 ASSISTANT:a1 USER: q2", messages)
    assert prompt == "q1 ASSISTANT:a1 USER: q2" and isinstance(prompt, str)
    assert format_prompt(prompt) == "BEGINNING OF CONVERSATION: USER: q1 ASSISTANT:a1 USER: q2 ASSISTANT:"
    assert chat_turns(prompt, "user") == messages
    assert chat_turns("plain", "assistant") == [{"role": "assistant", "content": "plain"}]
    assert chat_turns(Turns("no turns"), "user") == [{"role": "user", "content": "no turns"}]


# ------------------------------------------------------------------------------------------ exact boundaries
def test_prompt_response_end_are_the_whole_conversations_ids(chat):
    kind, tok = chat
    prompts = [p for p, _ in CONVERSATIONS]
    responses = [r for _, r in CONVERSATIONS]
    prompt_ids, response_ids, end = encode_prompt_response(tok, prompts, responses, CHAT)
    for p, r, (prompt, response) in zip(prompt_ids, response_ids, CONVERSATIONS):
        assert p.dtype == np.int32
        assert p.tolist() == _generation_prompt(tok, prompt)  # what a policy generates from
        assert [*p.tolist(), *r, *end] == _whole(tok, prompt, response)
        if kind == "llama3":  # the template writes BOS once; tokenising without special tokens adds no second one
            assert p.tolist()[0] == tok.bos_token_id and p.tolist().count(tok.bos_token_id) == 1
        else:
            assert tok.bos_token_id not in p.tolist()
    # Llama 3 trims the reply: the response ids are the trimmed text's, as the template renders it
    trimmed = tok(" padded answer \n".strip() if kind == "llama3" else " padded answer \n",
                  add_special_tokens=False)["input_ids"]
    assert response_ids[2] == trimmed
    # the prompts view encodes the same prompts to the same ids
    assert [ids.tolist() for ids in encode_prompts(tok, prompts, CHAT)] == [ids.tolist() for ids in prompt_ids]


def test_string_prompts_are_one_user_turn(chat):
    _, tok = chat
    ids, cut = encode_conversations(tok, ["How do I bake bread?"], ["Knead it."], CHAT, 512)
    assert cut == 0
    assert ids[0].tolist() == _whole(tok, [{"role": "user", "content": "How do I bake bread?"}],
                                     [{"role": "assistant", "content": "Knead it."}])
    text = conversations(["How do I bake bread?"], ["Knead it."], CHAT, tok)[0]
    assert text == tok.apply_chat_template([{"role": "user", "content": "How do I bake bread?"},
                                            {"role": "assistant", "content": "Knead it."}], tokenize=False)


def test_truncation_keeps_the_end_of_turn(chat):
    _, tok = chat
    prompt, response = CONVERSATIONS[0]
    whole = _whole(tok, prompt, response)
    end = end_ids(tok, CHAT)
    for max_length in (len(whole), len(whole) - 3, 8):
        ids, cut = encode_conversations(tok, [prompt], [response], CHAT, max_length)
        assert cut == int(max_length < len(whole))
        assert len(ids[0]) == min(len(whole), max_length)
        assert ids[0].tolist() == whole[: max_length - len(end)] + end if cut else whole
    with pytest.raises(ValueError, match="leaves no room"):
        encode_conversations(tok, [prompt], [response], CHAT, len(end))


def test_safe_rlhf_path_is_unchanged(tiny_tokenizer):
    tok = tiny_tokenizer
    prompts, responses = ["How do I bake bread?", Turns("q1", [{"role": "user", "content": "q1"}])], ["Knead.", "a"]
    ids, cut = encode_conversations(tok, prompts, responses, "safe_rlhf", 512)
    old, old_cut = encode_with_eos(tok, [SAFE_RLHF_TEMPLATE.replace("{prompt}", p) + r
                                         for p, r in zip(prompts, responses)], 512)
    assert cut == old_cut == 0 and [i.tolist() for i in ids] == [i.tolist() for i in old]
    prompt_ids, response_ids, end = encode_prompt_response(tok, prompts, responses, SAFE_RLHF_TEMPLATE)
    assert end == [tok.eos_token_id]
    assert prompt_ids[0].tolist() == tok(SAFE_RLHF_TEMPLATE.replace("{prompt}", prompts[0]))["input_ids"]
    assert response_ids[0] == tok("Knead.", add_special_tokens=False)["input_ids"]


def test_a_conversation_the_template_refuses_is_named(tmp_path):
    tok = load_tokenizer("tiny")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: "
                         "{% endif %}")
    tok.name_or_path = "no-system"
    prompts = ["fine", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "refused one"}]]
    with pytest.raises(ValueError, match=r"tokenizer 'no-system' cannot render the conversation .*refused one.*"
                                         r"System role not supported"):
        encode_conversations(tok, prompts, ["a", "b"], CHAT, 64)
