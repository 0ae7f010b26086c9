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
"""

from __future__ import annotations

import json
import os
import sys
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
"""


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

    def _parse_ckpt_path(self) -> None:
        """Keep the model's arguments as the config and the command line give them when ``--ckpt_path`` is set, and
        say which of them differ from the checkpoint's.

        LightningCLI (2.4+) otherwise overwrites them with the hyperparameters saved in the checkpoint, which
        silently drops command-line choices such as ``--model.flag_rule severity`` at test or predict time. The
        checkpoint still provides the weights (its loader fails loudly when they do not fit the configured model);
        a warning lists the arguments that differ, so that a changed ``backbone`` or ``pooling`` is seen.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch
        from lightning.pytorch.utilities import rank_zero_warn

        saved = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters", {})
        model = self.config[subcommand].get("model")
        given = dict(model.get("init_args") or {}) if model is not None else {}
        def text(value) -> str:
            return json.dumps(value, default=str)  # tuples and lists compare equal

        differ = {key: (saved[key], value) for key, value in given.items()
                  if key in saved and value is not None and text(value) != text(saved[key])}
        if differ:
            listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(differ.items()))
            rank_zero_warn(f"{ckpt_path} was trained with other model arguments; this run uses the given ones: "
                           f"{listed}")


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
    data = parser.instantiate_classes(cfg).data
    if not hasattr(data, "prepare"):
        raise SystemExit(f"{type(data).__name__} has no prepare(); nothing to prepare")
    return data.prepare(force=cfg.force)  # prints the report


def arena_main(argv: list[str]) -> Any:
    """``lit-safe arena``: the options of :func:`lit_safe.arena.run_arena`, from the command line or a YAML."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lit_safe.arena import run_arena

    parser = ArgumentParser(prog="lit-safe arena", description="Compare two policies with one reward and one cost "
                            "model: mean reward, mean cost, share of safe answers, win rates and the 2x2 table.")
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of the options below")
    parser.add_function_arguments(run_arena)
    cfg = parser.parse_args(argv)
    return run_arena(**{k: v for k, v in cfg.items() if k != "config"})


def video_arena_main(argv: list[str]) -> Any:
    """``lit-safe video-arena``: the options of :func:`lit_safe.video_arena.run_video_arena`."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lit_safe.video_arena import run_video_arena

    parser = ArgumentParser(prog="lit-safe video-arena", description="Compare two prompt augmenters: one video "
                            "generator renders their rewrites, one video reward and one cost model score the videos.")
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of the options below")
    parser.add_function_arguments(run_video_arena)
    cfg = parser.parse_args(argv)
    return run_video_arena(**{k: v for k, v in cfg.items() if k != "config"})


def function_main(function, prog: str, description: str, argv: list[str]) -> Any:
    """A project subcommand whose options are the arguments of ``function`` (command line or ``--config`` YAML)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML with any of the options below")
    parser.add_function_arguments(function)
    cfg = parser.parse_args(argv)
    return function(**{k: v for k, v in cfg.items() if k != "config"})


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


def run(args: list[str] | None = None) -> Any:
    """Run ``lit-safe`` with ``args`` (default ``sys.argv[1:]``); returns the CLI object, the prepare report or the
    arena summary."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-safe`` console script."""
    run(args)


if __name__ == "__main__":
    main()
