"""Fault injection: SIGKILL a short training run at many different moments (inside data
preparation, after updates, inside checkpoint writes, in the final phase), start it again, and
check that it always ends where an uninterrupted run ends: the same parameters, the same test
score, and no temporary file left behind. ``NMT_FAULT`` (nmt/faults.py) picks the moment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import cut_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def train_cmd(corpus: Path, cache: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nmt.train",
        "data=demo_es_en",
        f"data.dir={corpus}",
        f"data.cache_dir={cache}",
        "model=tiny",
        "model.dropout=0.3",
        "tokenizer.vocab_size=300",
        "trainer.max_tokens=800",
        "trainer.accum_steps=2",
        "trainer.max_updates=10",
        "trainer.save_every=2",
        "trainer.valid_every=3",
        "trainer.keep_best=2",
        "trainer.early_stop_metric=loss",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "decode.beam_size=2",
        "decode.max_len_a=1.0",
        "decode.max_len_b=5",
        "device=cpu",
        f"out_dir={out}",
        f"hydra.run.dir={out}",
    ]


def run(cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("NMT_FAULT", None)
    if fault:
        env["NMT_FAULT"] = fault
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def leftovers(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def outcome(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    results = json.loads((out / "results.json").read_text())
    return load_checkpoint(out / "last.pt")["model"], results


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple]:
    root = tmp_path_factory.mktemp("faults")
    corpus = cut_corpus(root / "corpus", {"train": 120, "dev": 10, "test": 10})
    cache = root / "cache"
    ref = root / "reference"
    res = run(train_cmd(corpus, cache, ref))
    assert res.returncode == 0, res.stderr[-3000:]
    return corpus, cache, outcome(ref)


def assert_same(out: Path, reference: tuple) -> None:
    params, results = outcome(out)
    ref_params, ref_results = reference
    for k in ref_params:
        assert torch.equal(params[k], ref_params[k]), k
    for key in ("updates", "epochs", "best_metric", "best_update"):
        assert results[key] == ref_results[key], key
    assert results["test"]["bleu"] == ref_results["test"]["bleu"]
    assert sorted(p.name for p in out.glob("ckpt_u*.pt")) == sorted(
        Path(name).name for _, name in load_checkpoint(out / "last.pt")["trainer"]["state"]["kept"]
    )


@pytest.mark.parametrize(
    "fault",
    [
        "prepare",  # cache built in its temporary directory, not yet renamed
        "update:1",  # before the first last.pt
        "update:5",  # between saves
        "save.written:1",  # temporary last.pt written, not renamed
        "save.written:4",  # a best.pt / ckpt_u*.pt write
        "save.renamed:3",  # renamed, directory not yet synced
        "finish",  # final phase: last.pt saved, validation and test to do
    ],
)
def test_killed_run_resumes_to_the_same_end(setup: tuple, tmp_path: Path, fault: str) -> None:
    corpus, cache, reference = setup
    if fault == "prepare":
        cache = tmp_path / "fresh-cache"
    out = tmp_path / "run"
    killed = run(train_cmd(corpus, cache, out), fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = run(train_cmd(corpus, cache, out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same(out, reference)
    assert leftovers(out, cache) == []


def test_killed_again_and_again(setup: tuple, tmp_path: Path) -> None:
    """One directory, killed at a new moment by each start, until a start runs through."""
    corpus, cache, reference = setup
    out = tmp_path / "run"
    for fault in ("update:2", "save.written:2", "update:3", "save.renamed:1", "finish"):
        res = run(train_cmd(corpus, cache, out), fault)
        assert res.returncode == -signal.SIGKILL, (fault, res.stderr[-3000:])
    res = run(train_cmd(corpus, cache, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(out, reference)
    assert leftovers(out, cache) == []
    shutil.rmtree(out)
