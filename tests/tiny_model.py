"""One tiny trained checkpoint shared by the serving, streaming and quantization tests.

Trained once per test session (on 400 lines of the demo es-en corpus) into a temporary
directory that is removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import nmt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import cut_corpus, quiet  # noqa: E402
from test_trainer import compose_train  # noqa: E402

_cache: dict[str, tuple[Path, Path]] = {}


def tiny_checkpoint() -> tuple[Path, Path]:
    """(checkpoint, corpus directory with test.es/test.en), trained on first use."""
    if "tiny" not in _cache:
        directory = Path(tempfile.mkdtemp(prefix="nmt-tiny-"))
        atexit.register(shutil.rmtree, directory, True)
        corpus = cut_corpus(directory / "corpus", {"train": 400, "dev": 20, "test": 20})
        overrides = quiet(corpus, directory / "cache", "trainer.max_updates=30", "optim.lr=0.005")
        nmt.train_model(compose_train(overrides), directory / "run")
        _cache["tiny"] = (directory / "run" / "last.pt", corpus)
    return _cache["tiny"]
