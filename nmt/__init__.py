"""nmt: recurrent neural machine translation in plain PyTorch.

The public Python API (everything else is private by convention)::

    from nmt import Translator, TrainConfig, train_model
    Translator.load("runs/default/best.pt").translate(["Hallo Welt."])
    train_model(TrainConfig(), "runs/mine")  # the typed config the commands build with Hydra

(``train_model``, not ``train``: ``nmt.train`` is the ``python -m nmt.train`` command.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "DataConfig",
    "DecodeConfig",
    "ModelConfig",
    "OptimConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TrainerConfig",
    "Translation",
    "Translator",
    "__version__",
    "train_model",
]

if TYPE_CHECKING:
    from nmt.config import (
        DataConfig,
        DecodeConfig,
        ModelConfig,
        OptimConfig,
        TokenizerConfig,
        TrainConfig,
        TrainerConfig,
    )
    from nmt.trainer import train as train_model
    from nmt.translation import Translation
    from nmt.translator import Translator


def __getattr__(name: str) -> Any:
    """Import on first use, so ``import nmt.config`` stays free of torch."""
    if name == "Translator":
        from nmt.translator import Translator

        return Translator
    if name == "Translation":
        from nmt.translation import Translation

        return Translation
    if name == "train_model":
        from nmt.trainer import train

        return train
    if name in __all__:
        from nmt import config

        return getattr(config, name)
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
