"""Fixtures of the data module tests: tokenizers with a chat template (``prompt_template: chat``)."""

import pytest

# ChatML (Qwen, many others) and Meta-Llama-3-8B-Instruct's own template (it writes BOS and trims the content).
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
CHAT_TEMPLATES = {"chatml": (CHATML, ["<|im_start|>", "<|im_end|>"]),
                  "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])}


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory):
    """``make(kind)``: the directory of the tiny preset tokenizer with the ``chatml`` or ``llama3`` chat template and
    its special tokens, saved once per session (a DataModule's ``tokenizer`` is a name or a path)."""
    from lit_safe.models.tokenizer import load_tokenizer

    made: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in made:
            template, special = CHAT_TEMPLATES[kind]
            tokenizer = load_tokenizer("tiny")
            tokenizer.add_special_tokens({"additional_special_tokens": special})
            tokenizer.chat_template = template
            directory = tmp_path_factory.mktemp(f"tokenizer_{kind}")
            tokenizer.save_pretrained(directory)
            made[kind] = str(directory)
        return made[kind]

    return make
