"""The Python API (``from nmt import Translator, TrainConfig, train_model``) against the commands,
and the README's Python examples, run as written (paths and sizes made small)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import nmt
from nmt import Translator
from nmt.config import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import cut_corpus, quiet  # noqa: E402
from test_trainer import compose_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut_corpus(tmp_path_factory.mktemp("corpus"), {"train": 400, "dev": 20, "test": 20})


@pytest.fixture(scope="module")
def checkpoint(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose_train(quiet(corpus, cache, "trainer.max_updates=30", "optim.lr=0.005"))
    nmt.train_model(cfg, out)
    return out / "last.pt"


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using nmt from Python") :]
    section = section[: section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_translator_equals_the_command(checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    lines = (corpus / "test.es").read_text(encoding="utf-8").splitlines()[:8] + [""]
    src = tmp_path / "in.es"
    src.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "nmt.translate", f"ckpt={checkpoint}", f"input={src}"]
        + [f"nbest_output={tmp_path / 'nbest'}", "decode.beam_size=3", "decode.nbest=3"]
        + ["device=cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        # one thread like this process (conftest): float sums in the same order, so the
        # near-ties of a barely trained model break the same way
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr
    translator = Translator.load(checkpoint, device="cpu", beam_size=3, nbest=3)
    assert translator.translate(lines) == res.stdout.splitlines()
    assert translator.translate(lines)[-1] == ""
    rows = (tmp_path / "nbest").read_text(encoding="utf-8").splitlines()
    nbest = translator.translate_nbest(lines[:8])
    expected = [
        f"{i} ||| {text} ||| {score:.4f}" for i, hs in enumerate(nbest) for text, score in hs
    ]
    assert rows[: len(expected)] == expected
    assert all(len(hs) == 3 for hs in nbest)
    assert [len(hs) for hs in translator.translate_nbest(lines[:2], nbest=2)] == [2, 2]


def test_translator_refuses_options_that_cannot_work(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="decode.beam_size=0"):
        Translator.load(checkpoint, device="cpu", beam_size=0)
    translator = Translator.load(checkpoint, device="cpu", beam_size=2)
    with pytest.raises(ConfigError, match="decode.nbest=3"):
        translator.translate_nbest(["hola"], nbest=3)


def test_readme_python_examples_run(
    checkpoint: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    translate, training = readme_blocks()
    monkeypatch.chdir(tmp_path)
    exec(translate.replace("runs/default/best.pt", str(checkpoint)), {})
    small = {
        "data/demo.es-en": str(corpus),
        "vocab_size=2000": "vocab_size=300",
        "max_updates=100, valid_every=50": "max_updates=4, valid_every=2, progress=False",
        "TrainConfig(\n": "TrainConfig(\n    model=nmt.ModelConfig(emb_size=16, enc_hidden=16, "
        "enc_layers=1, dec_hidden=16, dec_layers=1),\n    decode=nmt.DecodeConfig(beam_size=2, "
        "max_len_a=1.0, max_len_b=3),\n",
    }
    for old, new in small.items():
        assert old in training, old
        training = training.replace(old, new)
    scope: dict = {"nmt": nmt}
    exec(training, scope)
    assert scope["results"]["updates"] == 4
    assert (tmp_path / "runs/python-demo/best.pt").is_file()


def test_public_names() -> None:
    assert nmt.__version__.count(".") == 2
    for name in nmt.__all__:
        assert getattr(nmt, name) is not None
    with pytest.raises(AttributeError):
        nmt.does_not_exist  # noqa: B018
