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
