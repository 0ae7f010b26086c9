"""The one command line of lit_safe: ``lit-safe``.

``lit-safe fit|validate|test|predict --config configs/...yaml`` is a LightningCLI in subclass mode: the YAML's
``model.class_path`` picks the trainer (``lit_safe.modules.reward.RewardModule``, ...) and ``data.class_path``
the DataModule, so every algorithm runs through the same entry point, strategies and loggers.
Project subcommands:

- ``lit-safe prepare --config X.yaml [--force true]``: validate, tokenise and write the ``data`` section's dataset
  as litdata chunks, and print the report (rows read, kept, dropped by reason). ``fit`` prepares on its own when
  needed; ``prepare`` is for doing it once, ahead of a multi-GPU job.
- ``lit-safe arena ...``: compare two policies with the same reward and cost models (:mod:`lit_safe.arena`);
  ``lit-safe arena --help`` lists the options, which can also come from a ``--config`` YAML.
- ``lit-safe video-arena ...``: compare two prompt augmenters: their rewrites are rendered by one video generator and
  scored by the same video reward and cost models (:mod:`lit_safe.video_arena`).
- ``lit-safe tree-grow``, ``tree-pairs``, ``tree-experiment``: response trees from a policy, tree and chain preference
  pairs at a label budget, and the equal-budget experiment of tree against chain reward models
  (:mod:`lit_safe.tree_experiment`).

Errors: ``lit-safe`` (:func:`main`) prints a user error as one line, ``lit-safe: error: <message>`` on stderr, and
exits with code 2; ``LIT_SAFE_DEBUG=1`` shows the traceback instead. User errors (:func:`user_error`) are
:class:`FileNotFoundError` / :class:`NotADirectoryError` (a missing file or directory), ``DataValidationError``
(bad rows), :class:`lit_safe.checkpointing.CheckpointError` (a torn checkpoint, one of another module type), and a
:class:`ValueError` that lit_safe's own code (or jsonargparse, validating the config) raised on purpose. Anything
else, a ``ValueError`` raised inside torch or transformers included, is treated as a bug and keeps its traceback.
The checks run before any model is built where they can: backbone and tokenizer names (a preset, an existing
directory, or a hub id available offline) and the ``--ckpt_path`` (complete, of the configured module type).
:func:`run`, which tests call in-process, raises the exceptions themselves.

Checkpoints are written atomically (:mod:`lit_safe.checkpointing`): a kill leaves the old or the new
``last.ckpt``, never a torn one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

USAGE = """usage: lit-safe {fit,validate,test,predict,prepare} --config CONFIG.yaml [options]
       lit-safe arena --policy_a DIR --policy_b DIR --reward_model DIR --cost_model DIR --prompts FILE --output DIR
       lit-safe video-arena --rewriter_a none --rewriter_b DIR --reward_model DIR --cost_model DIR --output DIR
       lit-safe tree-grow --policy DIR --prompts FILE --output trees.jsonl [--kind pool]
       lit-safe tree-pairs --trees trees.jsonl [--pools pools.jsonl] --topology tree --budget N --output pairs.jsonl
       lit-safe tree-experiment --config configs/quickstart/tree_experiment.yaml

  fit, validate, test, predict   the Lightning commands (lit-safe fit --help lists every option)
  prepare                        validate and prepare the data section's dataset, print the report
  arena                          two policies answer the same prompts, scored by one reward and one cost model
  video-arena                    two prompt rewriters, one video generator, one video reward and one cost model
  tree-grow                      a response tree (or a pool of independent responses) per prompt, from a policy
  tree-pairs                     tree or chain preference pairs at a label budget, labelled (gold scorer or a file)
  tree-experiment                tree against chain reward models at equal label budgets, over seeds

A configuration error is printed as one line (exit code 2); LIT_SAFE_DEBUG=1 shows its traceback.
"""

# Init arguments that name a model or tokenizer (a preset, a directory or a hub id), checked before anything is built.
NAME_OPTIONS = ("backbone", "tokenizer", "actor", "reward_model", "cost_model", "reward_critic", "cost_critic", "model")
# ckpt_path values that Lightning resolves itself (not a local file).
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")
# Data settings that do not change which training batches come next (where prepared data is cached, evaluation and
# prediction inputs): not reported when a resumed fit changes them.
DATA_KEYS_NOT_RESUMED = ("prepared_dir", "predict_file", "eval_batch_size", "prepare_workers", "prepare_nodes",
                         "prepare_node_rank")


class LitSafeCLI(LightningCLI):
    """LightningCLI with lit_safe's defaults: subclass mode for model and data, configs saved next to the logs."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=42,
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs: Any):
        """The Trainer, with checkpoints written atomically (:class:`lit_safe.checkpointing.AtomicCheckpointIO`)
        unless the config chose its own ``CheckpointIO``, and the temporaries of killed saves removed."""
        from lit_safe.checkpointing import prepare_checkpoint_callbacks, with_atomic_checkpoint_io

        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        plugins = kwargs.get("plugins", trainer_config.get("plugins"))
        strategy = kwargs.get("strategy", trainer_config.get("strategy"))
        kwargs["plugins"] = with_atomic_checkpoint_io(plugins, strategy)
        trainer = super().instantiate_trainer(**kwargs)
        prepare_checkpoint_callbacks(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        """Check the model and tokenizer names of the config (:data:`NAME_OPTIONS`) before anything is built: a typo
        in a preset, a path that does not exist or a hub id that is not available offline is one clear error."""
        from lit_safe.models.tokenizer import is_preset, resolve_pretrained

        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        for section in ("model", "data"):
            node = config.get(section)
            init_args = node.get("init_args") if node is not None and hasattr(node, "get") else None
            for key in NAME_OPTIONS:
                value = init_args.get(key) if init_args is not None else None
                if isinstance(value, str) and value and not is_preset(value):
                    resolve_pretrained(value, what=key)
        take_model_tokenizer(config.get("model"), config.get("data"))

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built, and keep the model's arguments as the config and the
        command line give them.

        - A missing file, or a torn one (an interrupted write), is a clear error naming it; so is a checkpoint of
          another module type than the config's ``model.class_path`` (from the ``_class_path`` LightningCLI saves
          in the hyperparameters).
        - LightningCLI (2.4+) otherwise overwrites the model's arguments with the hyperparameters saved in the
          checkpoint, which silently drops command-line choices such as ``--model.flag_rule severity`` at test or
          predict time. The checkpoint still provides the weights (its loader fails loudly when they do not fit the
          configured model); a warning lists the arguments that differ, so that a changed ``backbone`` or
          ``pooling`` is seen.
        - ``fit`` warns about changed data settings (``batch_size`` ...): the data loader's saved position in the
          epoch counts batches of the old settings.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path:
            return
        saved = read_checkpoint_metadata(ckpt_path)
        if saved is None:
            return
        from lightning.pytorch.utilities import rank_zero_warn

        from lit_safe.checkpointing import CheckpointError

        config = self.config[subcommand]
        model = config.get("model")
        hparams = saved.get("hyper_parameters") or {}
        saved_class, configured = hparams.get("_class_path"), model.get("class_path") if model is not None else None
        if saved_class and configured and _class_name(saved_class) != _class_name(configured):
            verb = "trains" if subcommand == "fit" else "runs"
            raise CheckpointError(f"{ckpt_path} is a {_class_name(saved_class)} checkpoint, but the config {verb} "
                                  f"{_class_name(configured)}")

        given = model["init_args"].as_dict() if model is not None and model.get("init_args") is not None else {}
        differ = {key: (hparams[key], value) for key, value in given.items()
                  if key in hparams and value is not None and _text(value) != _text(hparams[key])}
        if differ:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(differ.items()))
            rank_zero_warn(f"{ckpt_path} was trained with other model arguments; this run uses the given ones: "
                           f"{listed}")

        data, saved_data = config.get("data"), saved.get("datamodule_hyper_parameters") or {}
        if subcommand != "fit" or data is None or not saved_data:
            return
        changed = {}
        if saved_data.get("_class_path") and data.get("class_path") and \
                _class_name(saved_data["_class_path"]) != _class_name(data.get("class_path")):
            changed["class_path"] = (saved_data["_class_path"], data.get("class_path"))
        for key, value in dict(data.get("init_args") or {}).items():
            if key in saved_data and key not in DATA_KEYS_NOT_RESUMED and value is not None \
                    and _text(value) != _text(saved_data[key]):  # None: unset (the tokenizer comes from the model)
                changed[key] = (saved_data[key], value)
        if changed:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            rank_zero_warn(f"{ckpt_path} was saved with other data settings; resuming with the given ones: {listed} "
                           "(the saved position in the epoch counts batches of the old settings, so the resumed "
                           "epoch does not continue with the same samples)")


def _text(value: Any) -> str:
    """A comparable text of a setting: tuples and lists compare equal, a settings dataclass as its fields."""
    return json.dumps(value, default=lambda v: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else str(v),
                      sort_keys=True)


def _class_name(class_path: str) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def read_checkpoint_metadata(ckpt_path: str | os.PathLike) -> dict | None:
    """Everything but the tensors' use of a ``--ckpt_path``: its keys (``hyper_parameters``,
    ``datamodule_hyper_parameters`` ...), read without loading the weights into memory.

    Returns ``None`` for what Lightning resolves itself (``best``, ``last``, ``hpc``, ``registry``, remote URLs),
    for a distributed checkpoint directory without ``meta.pt``, and for a complete checkpoint that cannot be read
    with ``weights_only=True`` (Lightning's own loader then decides).

    Raises:
        FileNotFoundError: a local path that does not exist.
        lit_safe.checkpointing.CheckpointError: a torn (empty, truncated) checkpoint file.
    """
    import torch

    from lit_safe.checkpointing import check_complete

    text = str(ckpt_path)
    path = Path(text)
    if not path.exists():
        if text in SPECIAL_CKPT_PATHS or text.startswith("registry:") or "://" in text:
            return None
        raise FileNotFoundError(f"ckpt_path {text}: no such file or directory")
    if path.is_dir():  # a distributed (FSDP2) checkpoint: its metadata file has the hyperparameters
        path = path / "meta.pt"
        if not path.is_file():
            return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:
        check_complete(path)  # raises CheckpointError for a torn file
        return None


def model_tokenizer(model: Any) -> str | None:
    """The tokenizer a config's model section uses: its ``tokenizer`` argument, else its ``backbone``."""
    init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
    if init_args is None:
        return None
    for key in ("tokenizer", "backbone"):
        value = init_args.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def take_model_tokenizer(model: Any, data: Any) -> None:
    """One tokenizer source of truth, settled before anything is built or prepared: a data section without a
    ``tokenizer`` takes the model's; one that names another tokenizer than the model's (different ids) is an error.

    Args:
        model, data: the config's ``model`` and ``data`` sections (``class_path`` + ``init_args``), changed in place.
    """
    data_args = data.get("init_args") if data is not None and hasattr(data, "get") else None
    if data_args is None or "tokenizer" not in data_args:
        return
    theirs = model_tokenizer(model)
    given = data_args.get("tokenizer")
    if given is None:
        if theirs is None:
            raise ValueError("data.tokenizer is not set and the config has no model to take it from: set "
                             "data.tokenizer (the model's backbone)")
        data_args["tokenizer"] = theirs
        return
    if theirs is None or given == theirs:
        return
    from lit_safe.models.tokenizer import load_tokenizer, tokenizer_fingerprint

    if tokenizer_fingerprint(load_tokenizer(given)) != tokenizer_fingerprint(load_tokenizer(theirs)):
        raise ValueError(f"data.tokenizer {given!r} is not the model's tokenizer ({theirs!r}): its ids differ, so the "
                         "data would be prepared for another model; leave data.tokenizer unset to use the model's")


def prepare_main(argv: list[str]) -> Any:
    """``lit-safe prepare``: build the ``data`` section of a config and prepare its dataset."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="lit-safe prepare", description="Validate and prepare the data of a config.")
    parser.add_argument("--config", action=ActionConfigFile, help="a fit config (only its data section is used)")
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    parser.add_argument("--force", type=bool, default=False, help="prepare again even if an identical one exists")
    for ignored in ("seed_everything", "trainer", "model", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{ignored}", type=Any, default=None, help="(ignored by prepare)")
    cfg = parser.parse_args(argv)
    take_model_tokenizer(cfg.get("model"), cfg.get("data"))
    data = parser.instantiate_classes(cfg).data
    if not hasattr(data, "prepare"):
        raise SystemExit(f"{type(data).__name__} has no prepare(); nothing to prepare")
    return data.prepare(force=cfg.force)  # prints the report


def function_parser(function, prog: str, description: str, skip: frozenset[str] = frozenset()):
    """A parser of the arguments of ``function`` but ``skip``, from the command line or a ``--config`` YAML."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of the options below")
    parser.add_function_arguments(function, skip=set(skip))
    return parser


def parse_options(parser, argv: list[str]) -> dict[str, Any]:
    """The options of ``argv`` (``--config`` applied) as keyword arguments."""
    return {k: v for k, v in parser.parse_args(argv).items() if k != "config"}


def function_main(function, prog: str, description: str, argv: list[str]) -> Any:
    """A project subcommand whose options are the arguments of ``function`` (command line or ``--config`` YAML)."""
    return function(**parse_options(function_parser(function, prog, description), argv))


def arena_parser(function, prog: str, description: str, prompts: dict[str, Any], num_prompts: dict[str, Any],
                 skip: frozenset[str] = frozenset()):
    """The options of an arena ``function``, which takes its prompts as a list: here ``--prompts`` says where to
    read them (``prompts`` and ``num_prompts`` are ``add_argument`` settings)."""
    parser = function_parser(function, prog, description, skip=frozenset({"prompts", "prompts_file"}) | skip)
    parser.add_argument("--prompts", **prompts)
    parser.add_argument("--num_prompts", type=int | None, **num_prompts)
    return parser


def arena_main(argv: list[str]) -> Any:
    """``lit-safe arena``: the options of :func:`lit_safe.arena.run_arena` (the prompts read by
    :func:`lit_safe.data_modules.prompts.read_prompts`), from the command line or a YAML."""
    from lit_safe.arena import run_arena
    from lit_safe.data_modules.prompts import read_prompts

    parser = arena_parser(
        run_arena, "lit-safe arena", "Compare two policies with one reward and one cost model: mean reward, mean "
        "cost, share of safe answers, win rates and the 2x2 table.",
        prompts={"type": str, "required": True, "help": "a JSON/JSONL/parquet file of rows with a ``prompt``, or "
                 "``synthetic`` (the quickstart's held-out synthetic prompts)."},
        num_prompts={"default": None, "help": "use the first N distinct prompts."},
    )
    options = parse_options(parser, argv)
    source, limit = options.pop("prompts"), options.pop("num_prompts")
    return run_arena(prompts=read_prompts(source, limit), prompts_file=str(source), **options)


def video_arena_main(argv: list[str]) -> Any:
    """``lit-safe video-arena``: the options of :func:`lit_safe.video_arena.run_video_arena` (the prompts read by
    :func:`lit_safe.data_modules.prompts.read_video_prompts`; ``--generator synthetic``: the synthetic SafeSora
    renderer draws the videos)."""
    from lit_safe.data_modules.prompts import read_video_prompts
    from lit_safe.data_modules.safesora_synthetic import render
    from lit_safe.video_arena import run_video_arena

    parser = arena_parser(
        run_video_arena, "lit-safe video-arena", "Compare two prompt augmenters: one video generator renders their "
        "rewrites, one video reward and one cost model score the videos.",
        prompts={"type": str, "default": "synthetic", "help": "``synthetic``, or a JSON/JSONL/gzip'd JSON file of "
                 "SafeSora(-Eval) rows (``prompt_text``)."},
        num_prompts={"default": 40, "help": "use the first N distinct prompts (all of a file when ``None``)."},
        skip=frozenset({"renderer"}),
    )
    options = parse_options(parser, argv)
    source, limit = options.pop("prompts"), options.pop("num_prompts")
    renderer = render if options["generator"] == "synthetic" else None
    return run_video_arena(prompts=read_video_prompts(source, limit, options["seed"]), prompts_file=source,
                           renderer=renderer, **options)


def tree_main(command: str, argv: list[str]) -> Any:
    """``lit-safe tree-grow|tree-pairs|tree-experiment`` (:mod:`lit_safe.tree_experiment`)."""
    from lit_safe import tree_experiment as tree

    function, description = {
        "tree-grow": (tree.tree_grow, "Grow one response tree (or pool of independent responses) per prompt."),
        "tree-pairs": (tree.tree_pairs_command, "Sample tree or chain preference pairs at a label budget and label "
                       "them (gold scorer with Bradley-Terry noise, deterministic, or a file of labels)."),
        "tree-experiment": (tree.run_tree_experiment, "Train reward models on tree and on chain pairs at equal label "
                            "budgets over seeds, and compare them against the gold scorer."),
    }[command]
    return function_main(function, f"lit-safe {command}", description, argv)


# What Lightning repeats on every run that says nothing about the user's run: a deprecation inside Lightning itself
# (its own pytree helper), the IterableDataset-length caution (lit_safe's loaders split the data per worker and rank
# through litdata, so the length is exact), the caution against passing `args` beside sys.argv (run(args) passes them
# on purpose, e.g. from Python or tests) and an advertisement for another logger.
# Lightning's notes that say nothing about a lit_safe run: a deprecation inside Lightning itself, the length of our
# streaming datasets, run(args) passing its arguments on purpose, the frozen networks (references, scorers) that
# stay in eval mode by design, and PPO's checkpoints holding the state after its manual optimisation step.
NOISE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)` is deprecated", r"Your `IterableDataset` has `__len__` defined",
                  r"LightningCLI's args parameter is intended to run from within Python",
                  r"Found \d+ module\(s\) in eval mode at the start of training",
                  r"Using ModelCheckpoint with manual optimization and every_n_train_steps")
NOISE_LOG_PREFIXES = ("💡 Tip: For seamless cloud logging",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_LOG_PREFIXES)


def quiet_known_noise() -> None:
    """Silence :data:`NOISE_WARNINGS` and :data:`NOISE_LOG_PREFIXES` (idempotent); every other warning stays."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())


def run(args: list[str] | None = None) -> Any:
    """Run ``lit-safe`` with ``args`` (default ``sys.argv[1:]``); returns the CLI object, the prepare report or the
    arena summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_known_noise()
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if argv[0] == "prepare":
        return prepare_main(argv[1:])
    if argv[0] == "arena":
        return arena_main(argv[1:])
    if argv[0] == "video-arena":
        return video_arena_main(argv[1:])
    if argv[0] in ("tree-grow", "tree-pairs", "tree-experiment"):
        return tree_main(argv[0], argv[1:])
    # Without explicit args LightningCLI reads sys.argv itself (passing both makes it warn).
    return LitSafeCLI(args=None if args is None else argv)


def _raised_in(error: BaseException, directories: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in a file under one of ``directories``."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = os.path.realpath(traceback.tb_frame.f_code.co_filename)
    return any(filename.startswith(directory + os.sep) for directory in directories)


def _package_directories(*names: str) -> tuple[str, ...]:
    import importlib.util

    directories = []
    for name in names:
        spec = importlib.util.find_spec(name)
        directories += [os.path.realpath(d) for d in (spec.submodule_search_locations or [])] if spec else []
    return tuple(directories)


def user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (see the module docstring), or ``None`` when it is a bug.

    jsonargparse wraps what a class's ``__init__`` raises ("Does not validate against any of the Union subtypes");
    the wrapped cause is what is judged.
    """
    from lit_safe.checkpointing import CheckpointError
    from lit_safe.data_modules.sources import DataValidationError

    jsonargparse = _package_directories("jsonargparse")
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or not _raised_in(error, jsonargparse):
            break
        error = inner
    if isinstance(error, (CheckpointError, DataValidationError, FileNotFoundError, NotADirectoryError)):
        return error
    project = _package_directories("lit_safe", "lit_safe.data_modules", "lit_safe.callbacks")
    if isinstance(error, ValueError) and _raised_in(error, project + jsonargparse):
        return error
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-safe`` console script: a user error is one line on stderr and exit code 2, a run
    stopped by non-finite steps one line and exit code 1 (their tracebacks with ``LIT_SAFE_DEBUG=1``); any other
    exception keeps its traceback."""
    try:
        run(args)
    except Exception as error:
        from lit_safe.modules.base import NonFiniteError

        if isinstance(error, NonFiniteError) and os.environ.get("LIT_SAFE_DEBUG", "").strip() in ("", "0"):
            print(f"lit-safe: error: {error}", file=sys.stderr)  # a run that diverged: said in one line, exit 1
            raise SystemExit(1) from None
        cause = user_error(error)
        if cause is None or os.environ.get("LIT_SAFE_DEBUG", "").strip() not in ("", "0"):
            raise
        print(f"lit-safe: error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
