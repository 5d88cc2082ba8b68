"""The training config as ``nmt-train`` composes it, for code that has no command line:
tests, benchmarks, notebooks.

    from nmt.compose import compose_train
    cfg = compose_train(["experiment=reference", "trainer.max_updates=100"])

Reads the package's own ``nmt/configs``; the result is the typed ``TrainConfig`` with every
value checked, exactly what ``python -m nmt.train ...`` would train with.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt.config import TrainConfig
from nmt.train import main as _register  # noqa: F401  (registers the train schema)

CONFIGS = Path(__file__).resolve().parent / "configs"


def compose_train(overrides: list[str]) -> TrainConfig:
    """``configs/train.yaml`` with Hydra-style ``overrides`` -> ``TrainConfig``."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, TrainConfig)
    return obj
