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
import torch

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
    assert "12 tensors differ in size" in msg
    assert "encoder.rnn.weight_ih_l0 (128, 32) in the checkpoint, (192, 32) here" in msg


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


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Resuming, extending and fine-tuning") :]
    block = section[section.index("```bash\n") + 8 : section.index("```\n", 10)]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]


@pytest.mark.slow
def test_readme_resume_and_fine_tune_commands(tmp_path: Path) -> None:
    """The README's four commands as written, each with small limits appended."""
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    for split, (start, n) in {"train": (0, 400), "dev": (0, 10), "test": (0, 10)}.items():
        for lang in ("de", "en"):
            lines = (ROOT / f"data/lo.de-en/{split}.{lang}").read_text(encoding="utf-8")
            chosen = lines.splitlines()[start : start + n]
            (mydata / f"{split}.{lang}").write_text("\n".join(chosen) + "\n", encoding="utf-8")
    small = ["trainer.progress=false", "decode.beam_size=2", "decode.max_len_a=1.0"]
    small += ["decode.max_len_b=3", "device=cpu", "trainer.valid_every=1000"]
    base = run(
        ["-m", "nmt.train", "data.dir=mydata", "model=tiny", "tokenizer.vocab_size=300"]
        + ["trainer.max_updates=3", "hydra.run.dir=runs/default", *small],
        cwd=tmp_path,
    )
    assert base.returncode == 0, base.stderr[-3000:]
    resume, extend, finetune, reuse = readme_commands()
    extra = {
        "resume=runs/default/last.pt": [],
        "resume=runs/default": ["trainer.max_updates=4"],
        "init_from=runs/default/best.pt": ["trainer.max_updates=2", *small],
        "tokenizer.model=runs/default/best.pt": ["model=tiny", "trainer.max_updates=2", *small],
    }
    for command in (resume, extend, finetune, reuse):
        assert command[:3] == ["python", "-m", "nmt.train"]
        res = run([*command[1:], *extra[command[3]]], cwd=tmp_path)
        assert res.returncode == 0, (command, res.stderr[-3000:])
    assert load_checkpoint(tmp_path / "runs/default/last.pt")["trainer"]["state"]["update"] == 4
    first = load_checkpoint(tmp_path / "runs/default/best.pt")
    for name in ("finetuned", "other"):
        ckpt = load_checkpoint(tmp_path / f"runs/{name}/last.pt")
        assert ckpt["tokenizer"] == first["tokenizer"], name  # the same SentencePiece model
        assert ckpt["trainer"]["state"]["update"] == 2


def test_fine_tuning_starts_from_the_weights_and_fresh_counters(
    corpus: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cfg = compose_train(quiet(corpus, cache, "trainer.max_updates=3"))
    train(cfg, tmp_path / "a")
    other = cut_corpus(tmp_path / "other", {"train": 200, "dev": 10, "test": 10})
    tuned = compose_train(
        quiet(other, cache, "trainer.max_updates=1", "optim.lr=1e-12", "model.emb_size=999")
    )
    train(replace(tuned, init_from=str(tmp_path / "a/last.pt")), tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a/last.pt"), load_checkpoint(tmp_path / "b/last.pt")
    assert b["tokenizer"] == a["tokenizer"] and b["model_config"] == a["model_config"]
    assert b["trainer"]["state"]["update"] == 1 and b["trainer"]["state"]["best_update"] == 1
    for k, v in a["model"].items():  # one step at lr 1e-12: still the first run's weights
        assert torch.allclose(b["model"][k], v, atol=1e-6), k
    fresh = compose_train(quiet(other, cache, "trainer.max_updates=1", "optim.lr=1e-12"))
    train(fresh, tmp_path / "c")
    c = load_checkpoint(tmp_path / "c/last.pt")
    fresh_out, first_out = c["model"]["output.weight"], a["model"]["output.weight"]
    assert fresh_out.shape != first_out.shape or not torch.allclose(fresh_out, first_out)


def test_tokenizer_model_errors(corpus: Path, tmp_path: Path) -> None:
    for spec, needle in [
        (tmp_path / "missing.model", "no such file"),
        (tmp_path, "holds no spm.model"),
        (corpus / "train.es", "not a SentencePiece model"),
    ]:
        res = run(
            ["-m", "nmt.train", *quiet(corpus, tmp_path / "cache"), f"tokenizer.model={spec}"]
            + [f"hydra.run.dir={tmp_path / 'run'}"]
        )
        one_error_line(res, f"tokenizer.model={spec}", needle)
