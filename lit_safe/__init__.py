"""lit_safe: a PyTorch Lightning toolkit for safety alignment (Safe RLHF, PKU-SafeRLHF, SafeSora, tree RMs).

The layers, bottom to top: pure math (:mod:`lit_safe.losses`), models (:mod:`lit_safe.models`), data
(:mod:`lit_safe.data_modules`), one LightningModule per algorithm (:mod:`lit_safe.modules`), and the one
command line (:mod:`lit_safe.cli`, installed as ``lit-safe``).
"""

__version__ = "0.1.0"
