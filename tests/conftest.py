"""Test settings: one thread, no network, tiny models; real rows from ../shared/data when present.

Real-data tests skip when ``../shared/data`` is absent (a user's machine), unless ``LIT_SAFE_REQUIRE_REAL_DATA=1``
(set by ``.ci/run``) turns the skip into a failure.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # must be set before torch is imported (see ENVIRONMENT.md)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIT_SAFE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _real_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        if os.environ.get("LIT_SAFE_REQUIRE_REAL_DATA") == "1":
            pytest.fail(f"real data required (LIT_SAFE_REQUIRE_REAL_DATA=1) but {path} is missing")
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def pku_real_file() -> Path:
    """200 real PKU-SafeRLHF (2024, default/train) rows."""
    return _real_file("pku_saferlhf/train_sample.jsonl")


@pytest.fixture
def beavertails_real_file() -> Path:
    """1,000 real BeaverTails 30k_test rows."""
    return _real_file("beavertails/30k_test_sample.jsonl")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lit_safe.models.tokenizer import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def tiny_ppo_models(tmp_path_factory, tiny_tokenizer):
    """A factory: ``make(cost_bias)`` saves (once per bias) a random tiny actor (seed 0) with its tokenizer and tiny
    reward and cost score models (seeds 1 and 2), the cost head's bias set to ``cost_bias`` (3.0: every answer
    unsafe), under ``actor``, ``reward`` and ``cost`` of the folder it returns."""
    import torch

    from lit_safe.models.backbone import load_backbone
    from lit_safe.models.score_model import ScoreModel

    made: dict[float, Path] = {}

    def make(cost_bias: float = 0.0) -> Path:
        if cost_bias not in made:
            root = tmp_path_factory.mktemp("ppo_models")
            torch.manual_seed(0)
            load_backbone("tiny", tiny_tokenizer, causal_lm=True).save_pretrained(root / "actor")
            tiny_tokenizer.save_pretrained(root / "actor")
            for seed, kind in ((1, "reward"), (2, "cost")):
                torch.manual_seed(seed)
                model = ScoreModel(load_backbone("tiny", tiny_tokenizer), score_type=kind)
                if kind == "cost":
                    model.score_head.bias.data.fill_(cost_bias)
                model.save_pretrained(root / kind, tokenizer=tiny_tokenizer)
            made[cost_bias] = root
        return made[cost_bias]

    return make


@pytest.fixture(scope="session")
def quickstart_config():
    """A factory: ``make(name, tmp, **data_args)`` writes the shipped ``configs/quickstart/<name>.yaml`` with its
    outputs moved under ``tmp`` (runs/, checkpoints/, ``<name>_model/``, prepared/), one short epoch, no progress bar,
    1,200 synthetic rows and ``data_args`` applied; returns the new config's path."""
    import yaml

    def make(name: str, tmp: Path, **data_args) -> Path:
        config = yaml.safe_load((REPO / "configs" / "quickstart" / f"{name}.yaml").read_text())
        config["trainer"].update({"max_epochs": 1, "enable_progress_bar": False, "log_every_n_steps": 5})
        config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "runs")
        for callback in config["trainer"]["callbacks"]:
            if callback["class_path"].endswith("ModelCheckpoint"):
                callback["init_args"]["dirpath"] = str(tmp / "checkpoints")
            if callback["class_path"].endswith("ExportPretrained"):
                callback["init_args"]["dirpath"] = str(tmp / f"{name}_model")
        config["data"]["init_args"].update(
            {"synthetic_rows": 1200, "num_workers": 0, "prepared_dir": str(tmp / "prepared"), **data_args}
        )
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


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
def chat_templates():
    """``{kind: (template, special tokens)}`` of the chat templates the tests use (``chatml``, ``llama3``)."""
    return CHAT_TEMPLATES


def _chat_tokenizer(kind: str):
    """The tiny preset tokenizer with the ``kind`` chat template and its special tokens (in memory)."""
    from lit_safe.models.tokenizer import load_tokenizer

    template, special = CHAT_TEMPLATES[kind]
    tokenizer = load_tokenizer("tiny")
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory):
    """``make(kind)``: the directory of the tiny preset tokenizer with the ``chatml`` or ``llama3`` chat template and
    its special tokens, saved once per session (a DataModule's ``tokenizer`` is a name or a path)."""
    made: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in made:
            directory = tmp_path_factory.mktemp(f"tokenizer_{kind}")
            _chat_tokenizer(kind).save_pretrained(directory)
            made[kind] = str(directory)
        return made[kind]

    return make


def _prepared_files(location) -> dict[str, object]:
    """Every file of a prepared dataset by relative path: its sha256; ``index.json`` parsed, less litdata's time stamp;
    the manifest left out (it records that time stamp's file)."""
    import hashlib
    import json

    out: dict[str, object] = {}
    root = Path(location)
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.name == "index.json":
            index = json.loads(path.read_text())
            index.pop("updated_at")
            out[name] = index
        elif path.is_file() and path.name != "manifest.json":
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def prepared_files():
    """``prepared_files(location)``: a prepared dataset's files (sha256 each; ``index.json`` less its time stamp; no
    manifest), for comparing preparations byte for byte."""
    return _prepared_files
