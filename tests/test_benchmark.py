"""scripts/benchmark.py --quick end to end on a tiny corpus, and how it plans its runs (its FLOP
count: tests/test_flops.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"


def load_arms() -> ModuleType:
    """scripts/bench/arms.py, with scripts/bench loaded as the package ``bench``: the name
    scripts/benchmark.py imports it by (from its own directory)."""
    package = ROOT / "scripts" / "bench"
    spec = importlib.util.spec_from_file_location(
        "bench", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return importlib.import_module("bench.arms")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_arms()


def test_plan_arms_shares_the_base_run(bench: ModuleType) -> None:
    base = bench.Arm(input_feeding=True, precision="fp32")
    arms, pairs = bench.plan_arms(base, ["input_feeding", "precision", "packing"])
    assert arms[0] == base
    assert len(arms) == len(set(arms)) == 4  # base + fast path + bf16 + padded
    by_name = {name: (a, b) for name, a, b in pairs}
    assert by_name["input_feeding"] == (bench.Arm(precision="fp32"), base)
    assert by_name["precision"] == (bench.Arm(input_feeding=True, precision="bf16"), base)


def test_quick_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in {"train": 200, "dev": 20, "test": 20}.items():
        for lang in ("es", "en"):
            lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            (corpus / f"{split}.{lang}").write_text(
                "\n".join(lines.splitlines()[:n]) + "\n", encoding="utf-8"
            )
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--corpus",
        str(corpus),
        "--src",
        "es",
        "--tgt",
        "en",
        "--threads",
        "1",
        "--device",  # the CPU figures and labels below, also on a CUDA host
        "cpu",
        "--decode-sentences",
        "10",
        "--out-json",
        str(out_json),
        "--out-md",
        str(out_md),
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out_json.read_text())

    assert report["command"].startswith("python scripts/benchmark.py --quick")
    assert report["machine"]["threads"] == 1 and report["machine"]["torch"]
    assert report["machine"]["device"] == "cpu"
    assert report["config"]["model"]["enc_hidden"] == 32  # model=tiny
    assert report["peak"]["fp32"]["gflop_s"] > 0
    runs = report["runs"]
    assert sum(r["base"] for r in runs) == 1 and runs[0]["base"]
    # base + random batching + input feeding + padded encoder + bf16 + torch LSTM + default
    # malloc; compile left out
    assert len(runs) == 7
    for run in runs:
        r = run["result"]
        assert "error" not in r, r
        assert r["tgt_tokens_per_s"] > 0 and r["updates_per_s"] > 0
        assert r["src_tgt_tokens_per_s"] > r["tgt_tokens_per_s"]
        assert 0 <= r["pad_fraction"] < 1 and 0 <= r["pad_fraction_tgt"] < 1
        # MFU divides by a matmul peak measured in the same process: on a shared, loaded
        # machine that peak can come out low, so only its sign and finiteness are checked here
        assert r["mfu"] > 0 and np.isfinite(r["mfu"])
        assert r["peak_rss_mb"] >= r["rss_before_training_mb"] > 0
        assert r["skipped_updates"] == 0 and np.isfinite(r["loss_per_token"])
        assert len(r["repeat_seconds"]) == report["repeats"] == 2
    by_label = {r["label"]: r["result"] for r in runs}
    tail = "fp32, eager, nmt LSTM, tuned malloc"
    bucketed = by_label[f"bucketed, fast path, packed encoder, {tail}"]
    random = by_label[f"random, fast path, packed encoder, {tail}"]
    assert random["pad_fraction"] > bucketed["pad_fraction"]

    names = {a["name"] for a in report["ablations"]}
    assert names == {"batching", "input_feeding", "packing", "precision", "rnn_impl", "malloc"}
    for ab in report["ablations"]:
        assert ab["ratio"] > 0
        assert ab["ratio"] == pytest.approx(ab["a_tgt_tokens_per_s"] / ab["b_tgt_tokens_per_s"])

    dec = report["decode"]
    assert dec["sentences"] == 10 and dec["max_tokens"] == report["config"]["decode"]["max_tokens"]
    for name in ("greedy", "beam5"):
        assert dec[name]["sentences_per_s"] > 0 and dec[name]["tokens_per_s"] >= 0

    md = out_md.read_text()
    assert md.startswith("# nmt benchmark") and report["command"] in md
    for heading in ("## Training", "## Decoding", "## Ablations"):
        assert heading in md
