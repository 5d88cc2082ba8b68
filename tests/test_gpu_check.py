"""scripts/gpu_check.sh without a GPU: usage errors, the "no CUDA" exit, a CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )


def test_script_parses_and_rejects_a_missing_out_dir(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    proc = run(tmp=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: OUT_DIR") and len(proc.stderr.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_is_a_clear_message(tmp_path: Path) -> None:
    proc = run(str(tmp_path / "out"), tmp=tmp_path)
    assert proc.returncode == 3, proc.stderr
    said = proc.stdout + proc.stderr
    assert "no CUDA device" in said and "--dry-run" in said
    assert "no CUDA device" in (tmp_path / "out/report.md").read_text()


def test_dry_run_on_the_cpu(tmp_path: Path) -> None:
    """The reference section on the CPU: float32 against float64 for both LSTMs."""
    out = tmp_path / "out"
    proc = run(str(out), "--dry-run", "--only", "env", "reference", "syncs", tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"env", "reference", "syncs"}
    ref = report["reference"]["result"]
    assert ref["ok"] and len(ref["rows"]) == 6  # 3 variants x 2 LSTMs (TF32 only on CUDA)
    assert "skipped" in report["syncs"]["result"]
    assert (out / "report.md").read_text().startswith("# nmt GPU check")


@pytest.mark.slow
def test_whole_dry_run(tmp_path: Path) -> None:
    """Every section on the CPU at tiny sizes (about 4 minutes on 2 cores)."""
    out = tmp_path / "out"
    proc = run(str(out), "--dry-run", tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["resume"]["result"]["nmt"]["exact"]
    assert report["nccl"]["result"]["ddp_vs_plain_max_abs_diff"] < 1e-6
    training = report["training"]["result"]
    assert set(training) == {"fp32", "bf16"}
    assert all(r["loss_first"] is not None and r["skipped_updates"] == 0 for r in training.values())
