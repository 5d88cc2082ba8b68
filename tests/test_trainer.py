"""Training: config composition, a tiny end-to-end run, exact resume, interruption, bad files."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import CheckpointError, load_checkpoint, load_model
from nmt.compose import compose_train
from nmt.train import main as _register  # noqa: F401  (registers train_schema)
from nmt.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small es-en corpus cut from the shipped demo data."""
    d = tmp_path_factory.mktemp("corpus")
    sizes = {"train": 400, "dev": 20, "test": 20}
    for split, n in sizes.items():
        for lang in ("es", "en"):
            lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            (d / f"{split}.{lang}").write_text(
                "\n".join(lines.splitlines()[:n]) + "\n", encoding="utf-8"
            )
    return d


def tiny_overrides(corpus: Path, cache: Path) -> list[str]:
    return [
        "data=demo_es_en",
        f"data.dir={corpus}",
        f"data.cache_dir={cache}",
        "model=tiny",
        "tokenizer.vocab_size=300",
        "trainer.max_tokens=600",
        "trainer.log_every=2",
        "trainer.progress=false",
        "decode.beam_size=2",
        "decode.max_len_a=1.0",
        "decode.max_len_b=5",
        "device=cpu",
    ]


def test_every_experiment_composes() -> None:
    files = sorted((CONFIGS / "experiment").glob("*.yaml"))
    assert files, "configs/experiment/ should hold one file per reported result"
    for f in files:
        cfg = compose_train([f"experiment={f.stem}"])
        assert cfg.model.enc_layers >= 1


def test_overrides_and_bad_keys() -> None:
    cfg = compose_train(
        ["model.enc_layers=3", "optim.lr=5e-4", "trainer.max_tokens=2000", "device=cpu"]
    )
    assert (cfg.model.enc_layers, cfg.optim.lr, cfg.trainer.max_tokens, cfg.device) == (
        3,
        5e-4,
        2000,
        "cpu",
    )
    with pytest.raises(Exception, match="enc_layerz"):
        compose_train(["model.enc_layerz=3"])
    with pytest.raises(Exception, match="enc_layers"):
        compose_train(["model.enc_layers=many"])


def test_tiny_run_end_to_end(corpus: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_train(
        tiny_overrides(corpus, tmp_path / "cache")
        + [
            "trainer.max_updates=40",
            "trainer.valid_every=20",
            "trainer.save_every=20",
            "optim.lr=0.005",
        ]
    )
    out = tmp_path / "run"
    res = train(cfg, out)
    assert res["updates"] == 40
    for name in ("last.pt", "best.pt", "results.json", "test_scores.json", "test.hyp.en"):
        assert (out / name).is_file(), name
    assert 0.0 <= res["test"]["bleu"] <= 100.0 and "nrefs:1" in res["test"]["bleu_signature"]
    assert len((out / "test.hyp.en").read_text(encoding="utf-8").splitlines()) == 20
    model, tok, ckpt = load_model(out / "best.pt")
    assert ckpt["metric"]["update"] in (20, 40) and tok.src_vocab_size == 300
    assert tok.tgt_vocab is None  # target_vocab=all (the default): every piece has a row
    assert model.output.weight.shape[0] == tok.tgt_vocab_size == 300

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "train/loss",
        "train/ppl",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_sec",
        "train/pad_fraction",
        "valid/loss",
        "valid/ppl",
        "valid/bleu",
        "valid/chrf",
    ):
        assert tag in tags["scalars"], tag
    assert "valid/attention" in tags["images"]
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss[-1] < loss[0] - 0.5, loss  # it learns
    valid = [e.value for e in acc.Scalars("valid/loss")]
    assert min(valid) < math.log(300) - 0.5  # well below a uniform guess over the vocabulary


def _final_params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_is_exact(corpus: Path, tmp_path: Path) -> None:
    base = tiny_overrides(corpus, tmp_path / "cache") + [
        "trainer.valid_every=1000",
        "trainer.save_every=1000",
        "eval_test=false",
        "model.dropout=0.3",  # dropout draws random numbers: the RNG state must be restored too
        "trainer.max_tokens=300",  # several batches per epoch, so resume lands mid-epoch
        "trainer.accum_steps=2",
    ]
    whole = compose_train(base + ["trainer.max_updates=8"])
    train(whole, tmp_path / "whole")
    half = compose_train(base + ["trainer.max_updates=4"])
    train(half, tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split/last.pt")
    assert ckpt["trainer"]["sampler"]["position"] > 0  # mid-epoch
    rest = replace(whole, resume=str(tmp_path / "split/last.pt"))
    train(rest, tmp_path / "split2")
    a, b = _final_params(tmp_path / "whole/last.pt"), _final_params(tmp_path / "split2/last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and they did train: parameters moved away from the half-way point
    assert not all(torch.equal(a[k], ckpt["model"][k]) for k in a)


def test_sigint_saves_loadable_checkpoint(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "nmt.train",
        *tiny_overrides(corpus, tmp_path / "cache"),
        "trainer.max_updates=100000",
        "trainer.log_every=1",
        "trainer.valid_every=100000",
        f"out_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    deadline = time.time() + 120
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "update 3 " in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGINT, output
    assert "resume" in output
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["trainer"]["state"]["update"] >= 3
    model, _, _ = load_model(out / "last.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_corrupt_checkpoints_give_clear_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable nmt checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        load_checkpoint(foreign)
    cfg = compose_train(
        tiny_overrides(corpus, tmp_path / "cache") + ["trainer.max_updates=2", "eval_test=false"]
    )
    train(cfg, tmp_path / "run")
    data = (tmp_path / "run/last.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable nmt checkpoint"):
        load_checkpoint(truncated)
    res = subprocess.run(
        [sys.executable, "-m", "nmt.translate", f"ckpt={truncated}", "input=-", "output=-"],
        cwd=ROOT,
        input="hola\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "truncated.pt" in res.stderr, res.stderr
