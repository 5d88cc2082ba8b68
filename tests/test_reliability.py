"""Resume, limits and errors that hold on every path (issue 13): one regression test per
defect, each of which failed on the code before the fix."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import nmt.run as run_module
from nmt.checkpoint import CheckpointError, load_checkpoint, remove_stale_temps
from nmt.config import ConfigError
from nmt.resume import find_resume
from nmt.trainer import train, train_sampler
from nmt.translate import read_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import compose_train, tiny_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cut_corpus(d: Path, sizes: dict[str, int]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        for lang in ("es", "en"):
            lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            text = "\n".join(lines.splitlines()[:n]) + "\n"
            (d / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cut_corpus(tmp_path_factory.mktemp("corpus"), {"train": 400, "dev": 20, "test": 20})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def quiet(corpus: Path, cache: Path, *extra: str) -> list[str]:
    """A tiny run: no test decoding, validation and saving only when asked."""
    return tiny_overrides(corpus, cache) + [
        "eval_test=false",
        "trainer.valid_every=1000",
        "trainer.save_every=1000",
        "trainer.tensorboard=false",
        *extra,
    ]


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def python(*args: str, cwd: Path = ROOT, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.update(kw.pop("env", {}))  # type: ignore[call-overload]
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        **kw,  # type: ignore[arg-type]
    )


def one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2 and one stderr line starting ``error:`` that holds every needle."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "\n" not in err and err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---------------------------------------------------------------------------------------------
# 1. resuming into another directory


def test_resume_into_another_directory_keeps_the_first_runs_files(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    base = quiet(corpus, cache, "trainer.valid_every=1", "trainer.early_stop_metric=loss")
    a, b = tmp_path / "a", tmp_path / "b"
    train(compose_train(base + ["trainer.max_updates=3", "trainer.keep_best=2"]), a)
    kept_a = sorted(p.name for p in a.glob("ckpt_u*.pt"))
    assert kept_a == ["ckpt_u2.pt", "ckpt_u3.pt"]
    assert load_checkpoint(a / "last.pt")["trainer"]["state"]["kept"][0][1] == "ckpt_u3.pt"

    # more updates into b: b's best-N list is its own, a keeps every file it had
    resumed = compose_train(base + ["trainer.max_updates=6", "trainer.keep_best=2"])
    train(replace(resumed, resume=str(a / "last.pt")), b)
    assert sorted(p.name for p in a.glob("ckpt_u*.pt")) == kept_a
    assert sorted(p.name for p in b.glob("ckpt_u*.pt")) == ["ckpt_u5.pt", "ckpt_u6.pt"]

    # nothing left to improve (no update at all): the new directory still has the best model
    c = tmp_path / "c"
    done = compose_train(base + ["trainer.max_updates=3"])
    train(replace(done, resume=str(a / "last.pt")), c)
    assert (c / "best.pt").read_bytes() == (a / "best.pt").read_bytes()
    assert sorted(p.name for p in a.glob("ckpt_u*.pt")) == kept_a


# ---------------------------------------------------------------------------------------------
# 2. exact resume at every update, epoch tails of accumulation groups included


def test_resume_is_exact_after_every_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = cut_corpus(tmp_path / "corpus", {"train": 120, "dev": 10, "test": 10})
    base = quiet(
        corpus,
        tmp_path / "cache",
        "model.dropout=0.3",  # dropout draws random numbers: the RNG state must come back too
        "trainer.max_tokens=800",  # 9 batches an epoch: groups of 2, 2, 2, 2 and 1
        "trainer.accum_steps=2",
        "trainer.save_every=1",
    )
    whole = compose_train(base + ["trainer.max_updates=11"])
    snapshots: list[Path] = []
    real_save = run_module.save_checkpoint

    def save_and_keep(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if Path(path).name == "last.pt":
            snap = tmp_path / f"snap{len(snapshots)}.pt"
            real_save(snap, payload)
            snapshots.append(snap)

    monkeypatch.setattr(run_module, "save_checkpoint", save_and_keep)
    train(whole, tmp_path / "whole")
    monkeypatch.undo()

    from nmt.data import prepare

    prepared = prepare(whole.data, whole.tokenizer)
    n_batches = len(train_sampler(prepared.dataset("train"), whole.trainer))
    assert n_batches % 2 == 1, "the epoch should end in a smaller accumulation group"
    states = [load_checkpoint(s)["trainer"]["state"] for s in snapshots]
    assert max(s["epoch"] for s in states) >= 2  # the run crosses epoch tails
    final = load_checkpoint(tmp_path / "whole/last.pt")["trainer"]["state"]
    for k, snap in enumerate(snapshots[:-1]):
        out = tmp_path / f"resumed{k}"
        train(replace(whole, resume=str(snap)), out)
        assert_same_params(tmp_path / "whole/last.pt", out / "last.pt")
        got = load_checkpoint(out / "last.pt")["trainer"]
        assert (got["state"]["update"], got["state"]["epoch"]) == (
            final["update"],
            final["epoch"],
        ), f"resumed after update {states[k]['update']}"


# ---------------------------------------------------------------------------------------------
# 3. a finished run started again


def test_finished_run_started_again_changes_nothing(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = compose_train(
        tiny_overrides(corpus, cache) + ["trainer.max_epochs=1", "trainer.valid_every=5"]
    )
    first = train(cfg, out)
    files = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = train(cfg, out)
    assert again == first
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files

    # a longer limit on the command line extends the run
    longer = train(replace(cfg, trainer=replace(cfg.trainer, max_epochs=2)), out)
    assert longer["epochs"] == 2 and longer["updates"] > first["updates"]


def test_a_run_killed_after_its_last_update_finishes_on_restart(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    """SIGTERM in the final phase (last.pt saved, validation and test still to do)."""
    out = tmp_path / "run"
    args = [
        "-m",
        "nmt.train",
        *tiny_overrides(corpus, cache),
        "trainer.max_updates=3",
        "trainer.valid_every=1000",
        f"out_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    res = python(*args, env={"NMT_FAULT": "finish:1:TERM"})
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "resume with" in res.stderr.strip().splitlines()[-1]
    assert load_checkpoint(out / "last.pt")["trainer"]["state"]["update"] == 3
    assert not (out / "results.json").exists()

    res = python(*args, env={"NMT_FAULT": "finish:1:INT"})
    assert res.returncode == 128 + signal.SIGINT and "Traceback" not in res.stderr

    res = python(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "test BLEU" in res.stdout
    assert load_checkpoint(out / "last.pt")["trainer"]["state"]["update"] == 3
    assert (out / "best.pt").is_file() and (out / "results.json").is_file()


# ---------------------------------------------------------------------------------------------
# 4. an epoch with fewer batches than processes


def test_epoch_smaller_than_the_world_is_an_error_at_start(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    res = python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nmt.train",
        *quiet(corpus, cache, "trainer.max_tokens=100000", "trainer.dist_timeout_s=30"),
        f"out_dir={tmp_path / 'run'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    assert res.returncode != 0
    assert "fewer batches per epoch" in res.stderr and "2 processes" in res.stderr
    assert not (tmp_path / "run/last.pt").exists()


# ---------------------------------------------------------------------------------------------
# 5. ordinary mistakes: one line, status 2, before any work


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.valid_every=0", "trainer.valid_every=0"),
        ("trainer.log_every=0", "trainer.log_every=0"),
        ("trainer.save_every=0", "trainer.save_every=0"),
        ("trainer.accum_steps=0", "trainer.accum_steps=0"),
        ("trainer.precision=fp64", "trainer.precision=fp64"),
        ("trainer.early_stop_metric=ter", "trainer.early_stop_metric=ter"),
        ("decode.beam_size=0", "decode.beam_size=0"),
        ("decode.nbest=6", "decode.nbest=6"),
        ("model.attention=luong", "model.attention=luong"),
        ("model.rnn_impl=cudnn", "model.rnn_impl=cudnn"),
        ("model.dropout=1.0", "model.dropout=1.0"),
        ("model.forget_bias=nan", "model.forget_bias=nan"),
        ("optim.schedule=cosine", "optim.schedule=cosine"),
        ("optim.lr=0", "optim.lr=0"),
        ("tokenizer.model_type=wordpiece", "tokenizer.model_type=wordpiece"),
        ("data.tgt=de", "data.tgt=de"),
        ("device=gpu", "device=gpu"),
    ],
)
def test_bad_config_values_fail_when_composed(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        compose_train([override])


def test_bad_values_on_the_command_line(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = python(
        "-m",
        "nmt.train",
        *tiny_overrides(corpus, cache),
        "trainer.valid_every=0",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    one_error_line(res, "trainer.valid_every=0")
    assert not cache.exists()  # nothing was prepared


@pytest.fixture(scope="module")
def checkpoint(corpus: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    train(compose_train(quiet(corpus, cache, "trainer.max_updates=2")), out)
    return out / "last.pt"


def test_translate_and_evaluate_mistakes(checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    src = corpus / "test.es"
    cases = [
        (["nmt.translate", f"ckpt={checkpoint}", f"input={src}", "device=gpu"], "device=gpu"),
        (["nmt.translate", f"ckpt={checkpoint}", f"input={src}", "device=cuda:0"], "CUDA"),
        (["nmt.translate", f"ckpt={checkpoint}", "decode.beam_size=0"], "decode.beam_size=0"),
        (["nmt.translate", f"ckpt={checkpoint}", "decode.nbest=9"], "decode.nbest=9"),
        (
            ["nmt.translate", f"ckpt={checkpoint}", f"input={src}", "output=/nonexistent/d/o.txt"],
            "output=/nonexistent/d/o.txt",
        ),
        (
            ["nmt.translate", f"ckpt={checkpoint}", f"input={src}", f"nbest_output={tmp_path}"],
            "is a directory",
        ),
        (
            ["nmt.evaluate", f"ckpt={checkpoint}", f"src={src}", f"ref={corpus / 'test.en'}"]
            + ["device=cuda"],
            "device=cuda",
        ),
        (
            ["nmt.evaluate", f"ckpt={checkpoint}", f"src={src}", f"ref={corpus / 'test.en'}"]
            + ["json_output=/nonexistent/s.json"],
            "json_output=/nonexistent/s.json",
        ),
    ]
    if torch.cuda.is_available():
        cases = [c for c in cases if "cuda" not in " ".join(c[0])]
    for args, needle in cases:
        one_error_line(python("-m", *args, input="hola\n"), needle)


# ---------------------------------------------------------------------------------------------
# 8. a refused checkpoint


class _Code:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo this should never run",))


def test_a_pickle_with_code_is_refused_without_advice(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "nmt-checkpoint", "model": _Code()}, f, protocol=4)
    torch.save({"format": "nmt-checkpoint", "model": _Code()}, tmp_path / "bad2.pt")
    for path in (bad, tmp_path / "bad2.pt"):
        res = python("-m", "nmt.translate", f"ckpt={path}", input="hola\n")
        err = one_error_line(res, str(path), "not an nmt checkpoint")
        assert "weights_only" not in err and "Warning" not in res.stderr
        assert "should never run" not in res.stdout


# ---------------------------------------------------------------------------------------------
# 9. leftovers, permissions, BOM, averaging


def test_stale_temporary_files_are_removed_and_live_ones_kept(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    host = socket.gethostname()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        dead_pid = 2**22 + 17  # above the default pid_max: no such process
        stale = out / f".last.pt.{host}.{dead_pid}.x1y2.tmp"
        live = out / f".last.pt.{host}.{sleeper.pid}.a1b2.tmp"
        other_host = out / f".last.pt.elsewhere.{dead_pid}.c3d4.tmp"
        not_ours = out / ".notes.tmp"
        for p in (stale, live, other_host, not_ours):
            p.write_bytes(b"partial")
        assert remove_stale_temps(out) == [stale]
        stale.write_bytes(b"partial")
        train(compose_train(quiet(corpus, cache, "trainer.max_updates=1")), out)
        assert not stale.exists()
        assert live.exists() and other_host.exists() and not_ours.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_checkpoints_follow_the_umask(corpus: Path, cache: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(compose_train(quiet(corpus, cache, "trainer.max_updates=1")), out)
    finally:
        os.umask(old)
    assert (out / "last.pt").stat().st_mode & 0o777 == 0o644


def test_translation_input_drops_a_bom_like_prepare(tmp_path: Path) -> None:
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_bytes("Hola mundo.\r\nAdiós.\n".encode())
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_lines(str(bom)) == read_lines(str(plain)) == ["Hola mundo.", "Adiós."]


def test_average_last_takes_only_this_runs_checkpoints(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    foreign = out / "ckpt_u999.pt"  # an earlier run's file in a reused directory
    foreign.write_bytes(b"not ours")
    base = quiet(corpus, cache, "trainer.valid_every=1", "trainer.early_stop_metric=loss")
    train(compose_train(base + ["trainer.max_updates=3", "trainer.keep_best=2"]), out)
    from nmt.average import last_checkpoints

    assert [p.name for p in last_checkpoints(out, 2)] == ["ckpt_u2.pt", "ckpt_u3.pt"]
    res = python("-m", "nmt.average", "--run", str(out), "--last", "2", "-o", str(out / "a.pt"))
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(out / "a.pt")["averaged_from"] == [
        str(out / "ckpt_u2.pt"),
        str(out / "ckpt_u3.pt"),
    ]
    with pytest.raises(CheckpointError, match="keeps 2"):
        last_checkpoints(out, 3)


# ---------------------------------------------------------------------------------------------
# 10. an explicit resume= must not go back to an older state


def test_explicit_resume_prefers_the_newer_last_pt_of_the_run_directory(
    corpus: Path, cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = quiet(corpus, cache, "trainer.save_every=1")
    a, b = tmp_path / "a", tmp_path / "b"
    train(compose_train(base + ["trainer.max_updates=2"]), a)
    cfg = replace(compose_train(base + ["trainer.max_updates=4"]), resume=str(a / "last.pt"))
    train(cfg, b)
    assert find_resume(cfg, b) == b / "last.pt"
    assert find_resume(cfg, tmp_path / "new") == a / "last.pt"
    longer = replace(cfg, trainer=replace(cfg.trainer, max_updates=5))
    with caplog.at_level(logging.INFO, logger="nmt.trainer"):
        train(longer, b)  # as torchrun --max-restarts would start it again
    assert any(f"resumed from {b / 'last.pt'} at update 4" in r.message for r in caplog.records)
    assert load_checkpoint(b / "last.pt")["trainer"]["state"]["update"] == 5


def test_forget_bias_takes_a_number_or_null() -> None:
    assert compose_train(["model.forget_bias=1"]).model.forget_bias == 1.0
    assert compose_train(["model.forget_bias=null"]).model.forget_bias is None
