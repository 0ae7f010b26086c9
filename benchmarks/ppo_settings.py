"""The settings of a timed PPO run that every PPO benchmark takes alike (``ppo_throughput.py``, ``trl_ppo.py`` and
``ppo_vs_trl.py``, which passes them to both sides): one definition, so that lit_safe's and TRL's runs read the same
flags. The defaults are the side-by-side comparison's (issue 14's); ``ppo_throughput.py`` run alone has its own.
Standard library only: ``trl_ppo.py`` runs it in TRL's environment."""

from __future__ import annotations

import argparse


def add_iteration_settings(parser: argparse.ArgumentParser, *, batch: int = 8, max_new_tokens: int = 32,
                           ppo_epochs: int = 4, num_minibatches: int = 1, iterations: int = 10) -> None:
    """Add ``--threads``, ``--batch``, ``--max-new-tokens``, ``--temperature``, ``--ppo-epochs``,
    ``--num-minibatches``, ``--warmup`` and ``--iterations`` to ``parser``."""
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--batch", type=int, default=batch, help="prompts per iteration (rollout)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (top_p 1)")
    parser.add_argument("--ppo-epochs", type=int, default=ppo_epochs)
    parser.add_argument("--num-minibatches", type=int, default=num_minibatches)
    parser.add_argument("--warmup", type=int, default=1, help="untimed first iterations")
    parser.add_argument("--iterations", type=int, default=iterations, help="timed iterations")
