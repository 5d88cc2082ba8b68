"""Resume means the same run: ``resume=PATH`` alone rebuilds the run's own config from the
checkpoint, applies only the command line's overrides, and refuses changes that cannot work."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nmt.checkpoint import CheckpointError, load_checkpoint
from nmt.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import cut_corpus, one_error_line, quiet  # noqa: E402
from test_trainer import compose_train, tiny_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut_corpus(tmp_path_factory.mktemp("corpus"), {"train": 400, "dev": 20, "test": 20})


def run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_the_reports_resume_command_continues_the_run(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run(
        ["-m", "nmt.train", *tiny_overrides(corpus, tmp_path / "cache")]
        + ["trainer.max_updates=3", "trainer.valid_every=1000", f"hydra.run.dir={out}"]
    )
    assert first.returncode == 0, first.stderr[-3000:]
    line = next(x for x in first.stdout.splitlines() if x.strip().startswith("resume:"))
    command = shlex.split(line.split(":", 1)[1])
    assert command[:3] == ["python", "-m", "nmt.train"]

    # verbatim: the run is finished, so it says so and changes nothing
    before = (out / "last.pt").read_bytes()
    again = run(command[1:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        "already finished" in again.stdout + again.stderr
        and (out / "last.pt").read_bytes() == before
    )

    # with a larger limit it continues the same run, in the same directory, with its own config
    longer = run([*command[1:], "trainer.max_updates=5"])
    assert longer.returncode == 0, longer.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["trainer"]["state"]["update"] == 5
    assert ckpt["train_config"]["data"]["dir"] == str(corpus)
    assert ckpt["train_config"]["trainer"]["max_updates"] == 5
    assert ckpt["model_config"]["emb_size"] == 32  # model=tiny, from the checkpoint
    assert "resume=" in (out / ".hydra/overrides.yaml").read_text()  # Hydra's run dir: out

    # what cannot change is refused, each key with both values
    err = one_error_line(
        run([*command[1:], "model.enc_hidden=64", "tokenizer.vocab_size=500"]),
        "model.enc_hidden: 32 in the run, 64 on the command line",
        "tokenizer.vocab_size: 300 in the run, 500 on the command line",
    )
    assert "resume=" in err
    one_error_line(run([*command[1:], "model=default"]), "config groups", "model=default")
    one_error_line(run([*command[1:], "trainer.save_every=0"]), "trainer.save_every=0")


def test_a_checkpoint_that_does_not_fit_says_what_differs(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = compose_train(quiet(corpus, cache, "trainer.max_updates=1"))
    train(cfg, tmp_path / "a")
    wider = replace(cfg, model=replace(cfg.model, enc_hidden=48), resume=str(tmp_path / "a"))
    with pytest.raises(CheckpointError) as e:
        train(wider, tmp_path / "b")
    msg = str(e.value)
    assert "\n" not in msg and "differ in size" in msg
    assert "(32, 32) in the checkpoint, (192, 32) here" in msg or "in the checkpoint" in msg


def test_another_vocabulary_is_refused(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = compose_train(quiet(corpus, cache, "trainer.max_updates=1"))
    train(cfg, tmp_path / "a")
    other = replace(  # same vocabulary size, another SentencePiece model
        cfg,
        tokenizer=replace(cfg.tokenizer, model_type="bpe"),
        resume=str(tmp_path / "a/last.pt"),
    )
    with pytest.raises(CheckpointError, match="SentencePiece model .* not the one the data"):
        train(other, tmp_path / "b")
