"""What every entry point does with the config Hydra composed: convert it to its typed dataclass
(the values are checked there), and end a user's mistake with one ``error:`` line on stderr and
exit status 2, never a traceback.

    with user_errors(DataError, ConfigError):
        cfg = to_config(dcfg, PrepareConfig)
        ...
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


def to_config(dcfg: DictConfig | ListConfig, schema: type[T]) -> T:
    """The composed config as its typed dataclass ``schema`` (whose ``__post_init__`` checks
    every value: a bad one raises ``ConfigError``)."""
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, schema), type(cfg)
    return cfg


def log_to_stderr() -> None:
    """INFO and up as ``LEVEL name: message`` on stderr (stdout carries the command's output)."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@contextmanager
def user_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Errors of ``kinds`` raised inside become ``fail(str(error))``; anything else passes."""
    try:
        yield
    except kinds as e:
        fail(str(e))
