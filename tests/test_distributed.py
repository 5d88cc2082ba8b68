"""Data-parallel training through torchrun: 2 CPU processes on gloo.

Two processes with ``max_tokens`` each compute the same updates as one process with
``accum_steps=2``: rank 0 takes global batches 0, 2, 4, ..., rank 1 takes 1, 3, 5, ..., and one
process groups (0, 1), (2, 3), ...; both normalise by the real target tokens of the union.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint
from nmt.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_worker import compose_train, train_updates  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small es-en corpus cut from the shipped demo data."""
    d = tmp_path_factory.mktemp("corpus")
    for split, n in {"train": 400, "dev": 20, "test": 20}.items():
        for lang in ("es", "en"):
            lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            (d / f"{split}.{lang}").write_text(
                "\n".join(lines.splitlines()[:n]) + "\n", encoding="utf-8"
            )
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torchrun runs each worker with OMP_NUM_THREADS=1; one process with the same thread count
    does its float reductions in the same order (with 2 threads results differ by ~1e-7)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def overrides(corpus: Path, cache: Path) -> list[str]:
    return [
        "data=demo_es_en",
        f"data.dir={corpus}",
        f"data.cache_dir={cache}",
        "model=tiny",  # dropout 0: no randomness in an update
        "tokenizer.vocab_size=300",
        "trainer.max_tokens=400",
        "trainer.progress=false",
        "optim.lr=0.005",
        "decode.beam_size=1",
        "decode.max_len_a=1.0",
        "decode.max_len_b=5",
        "eval_test=false",
        "device=cpu",
        "trainer.dist_timeout_s=30",
    ]


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=atol, msg=k)


def test_ranks_agree_and_equal_one_process_on_the_union(
    corpus: Path, cache: Path, tmp_path: Path, one_thread: None
) -> None:
    n = 3
    args = overrides(corpus, cache)
    run([*TORCHRUN, str(ROOT / "tests/ddp_worker.py"), str(tmp_path), str(n), *args], ROOT)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # the ranks trained on different batches ...
    assert all(not set(a) & set(b) for a, b in zip(r0["batches"], r1["batches"], strict=True))
    # ... and hold identical parameters
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k

    one = train_updates(compose_train(args + ["trainer.accum_steps=2"]), n)
    assert one["batches"] == [
        sorted(a + b) for a, b in zip(r0["batches"], r1["batches"], strict=True)
    ]
    assert_close(r0["params"], one["params"], atol=1e-6)
    init = train_updates(compose_train(args), 0)["params"]
    assert not all(torch.equal(init[k], one["params"][k]) for k in init)  # it did train


def test_torchrun_entry_point_and_resume_in_one_process(
    corpus: Path, cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, one_thread: None
) -> None:
    args = overrides(corpus, cache) + [
        "trainer.max_updates=4",
        "trainer.valid_every=2",
        "trainer.save_every=2",
        "trainer.log_every=1",
    ]
    # the default timestamped hydra.run.dir (runs/DATE/TIME under cwd): every rank must use
    # rank 0's, and only rank 0 writes there
    res = run([*TORCHRUN, "-m", "nmt.train", *args], tmp_path)
    runs = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    out = runs[0]
    names = {p.name for p in out.iterdir()}
    assert {".hydra", "train.log", "tensorboard", "last.pt", "best.pt", "results.json"} <= names
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file
    assert res.stdout.count("nmt: training finished") == 1  # only rank 0 reports
    assert "[rank 1]" not in res.stdout + res.stderr  # rank 1 has nothing to warn about
    log_text = (out / "train.log").read_text()
    assert log_text.count("stopping: reached max_updates=4") == 1
    assert "world size: 2" in log_text and "validation at update 2" in log_text

    ckpt = load_checkpoint(out / "last.pt")
    t = ckpt["trainer"]
    assert (t["world_size"], t["state"]["update"], t["state"]["epoch"]) == (2, 4, 0)
    assert len(t["rank_rngs"]) == 2
    # one process over the union of the two ranks' batches reaches the same parameters
    single = compose_train(args + ["trainer.accum_steps=2", "trainer.tensorboard=false"])
    train(single, tmp_path / "single")
    assert_close(ckpt["model"], load_checkpoint(tmp_path / "single/last.pt")["model"], 1e-6)

    # resuming with 1 process instead of 2: the rule is "start the next epoch"
    more = compose_train(args + ["trainer.max_updates=6", f"resume={out / 'last.pt'}"])
    with caplog.at_level(logging.WARNING, logger="nmt.trainer"):
        res1 = train(more, tmp_path / "resumed")
    assert "written by 2 processes, now 1" in caplog.text
    assert res1["updates"] == 6
    t1 = load_checkpoint(tmp_path / "resumed/last.pt")["trainer"]
    assert (t1["world_size"], t1["state"]["epoch"]) == (1, 1)
    assert t1["sampler"]["position"] == 2  # two updates into the next epoch, accum_steps=1


def start_torchrun(corpus: Path, cache: Path, tmp_path: Path, timeout_s: int) -> subprocess.Popen:
    cmd = [
        *TORCHRUN,
        "-m",
        "nmt.train",
        *overrides(corpus, cache),
        "trainer.max_updates=100000",
        "trainer.valid_every=100000",
        "trainer.log_every=1",
        f"trainer.dist_timeout_s={timeout_s}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, like a job in a terminal
    )


def wait_for_update(proc: subprocess.Popen, update: int, timeout: float = 180) -> list[str]:
    assert proc.stdout is not None
    seen, deadline = [], time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if f"update {update} epoch" in line or time.time() > deadline:
            break
    return seen


def worker_pid(proc: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (read from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # gone meanwhile, or not ours to read
            continue
        if ppid == proc.pid and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    raise AssertionError(f"no worker with RANK={rank}")


def finish(proc: subprocess.Popen, seen: list[str], timeout: float) -> tuple[int, str, float]:
    start = time.time()
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"still running {timeout:.0f}s after the failure: it hangs") from None
    return proc.returncode, "".join(seen) + rest, time.time() - start


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads worker pids from /proc")
def test_a_dead_rank_stops_the_run(corpus: Path, cache: Path, tmp_path: Path) -> None:
    proc = start_torchrun(corpus, cache, tmp_path, timeout_s=30)
    seen = wait_for_update(proc, 2)
    os.kill(worker_pid(proc, 1), signal.SIGKILL)
    code, output, seconds = finish(proc, seen, timeout=60)
    assert code != 0, output
    assert "Connection closed by peer" in output or "exitcode: -9" in output, output[-3000:]
    assert seconds < 60


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads worker pids from /proc")
def test_a_hung_rank_times_out(corpus: Path, cache: Path, tmp_path: Path) -> None:
    """A stopped (not dead) rank: rank 0's next collective times out after
    trainer.dist_timeout_s, it exits with an error, torchrun stops the rest (SIGTERM, then
    SIGKILL after its 30 s grace)."""
    proc = start_torchrun(corpus, cache, tmp_path, timeout_s=5)
    seen = wait_for_update(proc, 2)
    pid = worker_pid(proc, 1)
    os.kill(pid, signal.SIGSTOP)
    try:
        code, output, seconds = finish(proc, seen, timeout=120)
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    assert code != 0, output
    assert "Timed out" in output, output[-3000:]


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_a_resumable_checkpoint(
    corpus: Path, cache: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches torchrun and both workers (one process group); torchrun relays it to the
    workers a second time, which must not abort the save."""
    proc = start_torchrun(corpus, cache, tmp_path, timeout_s=30)
    seen = wait_for_update(proc, 3)
    os.killpg(proc.pid, signal.SIGINT)
    code, output, _ = finish(proc, seen, timeout=120)
    assert code != 0
    assert "interrupted: saved" in output, output[-3000:]
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert ckpt["trainer"]["state"]["update"] >= 3 and ckpt["trainer"]["world_size"] == 2
