"""Installed as a package, nmt works from any directory: build the wheel, install it into a
new virtual environment (reusing this environment's torch and other dependencies: no
downloads), and from an empty directory run prepare, a short training run, translation,
evaluation and averaging through the console scripts."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import cut_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-3000:])
    return res


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A new environment with the nmt wheel installed and this one's packages visible."""
    tmp = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"  # never download
    # build from a copy: a build writes build/ and *.egg-info into the tree it builds
    top = {".venv", ".git", "build", "dist", "runs", "data", "outputs", ".peers", ".whl"}
    anywhere = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

    def skip(folder: str, names: list[str]) -> list[str]:
        at_top = Path(folder) == ROOT
        return [
            n for n in names if n in anywhere or n.endswith(".egg-info") or (at_top and n in top)
        ]

    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    sh(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w"]
        + [str(tmp / "wheels"), str(src)],
        tmp,
        env,
    )
    (wheel,) = (tmp / "wheels").glob("nmt-*.whl")
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", str(venv)], tmp, env)
    py = venv / "bin/python"
    purelib = sh(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env
    )
    # this environment's site-packages after the new one's: torch, hydra, ... without nmt's
    # editable finder (.pth files of an added path are not run)
    Path(purelib.stdout.strip(), "deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    sh([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, env


def test_console_scripts_from_an_empty_directory(
    venv: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, env = venv
    corpus = cut_corpus(tmp_path / "corpus", {"train": 300, "dev": 10, "test": 10})
    work = tmp_path / "empty"
    work.mkdir()
    where = sh([str(path / "bin/python"), "-c", "import nmt; print(nmt.__file__)"], work, env)
    assert str(path) in where.stdout, where.stdout
    data = [f"data.dir={corpus}", "data.src=es", "data.tgt=en", "tokenizer.vocab_size=300"]
    sh(["nmt-prepare", *data], work, env)
    sh(
        ["nmt-train", *data, "model=tiny", "trainer.max_updates=3", "trainer.valid_every=2"]
        + ["trainer.progress=false", "decode.beam_size=2", "decode.max_len_b=3"]
        + ["decode.max_len_a=1.0", "hydra.run.dir=run", "device=cpu"],
        work,
        env,
    )
    assert (work / "run/best.pt").is_file() and (work / "data/cache").is_dir()
    res = subprocess.run(
        ["nmt-translate", "ckpt=run/best.pt", "decode.beam_size=2"],
        cwd=work,
        env=env,
        input="hola\n\nbuenos días\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 3, res.stderr
    sh(
        ["nmt-evaluate", "ckpt=run/best.pt", f"src={corpus / 'test.es'}"]
        + [f"ref={corpus / 'test.en'}", "decode.beam_size=2", "json_output=s.json"],
        work,
        env,
    )
    assert (work / "s.json").is_file()
    sh(["nmt-average", "run/best.pt", "run/last.pt", "-o", "avg.pt"], work, env)
    bad = subprocess.run(
        ["nmt-train", "trainer.valid_every=0"], cwd=work, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: trainer.valid_every=0")
    serve = subprocess.run(  # the console script and its packaged config (no server started)
        ["nmt-serve", "ckpt=run/best.pt", "port=70000"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert serve.returncode == 2 and serve.stderr.startswith("error: port=70000"), serve.stderr
    shutil.rmtree(work / "data")
