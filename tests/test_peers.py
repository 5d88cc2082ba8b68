"""The pure helpers of scripts/peers/onmt_benchmark.py (log parsing, throughput, vocabularies).

The peer benchmark itself installs and runs OpenNMT-py and is never run by the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "peers" / "onmt_benchmark.py"


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("onmt_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["onmt_benchmark"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


NMT_LOG = """\
[2026-11-29 23:43:10,250][nmt.trainer][INFO] - training: 43641 pairs
[2026-11-29 23:43:20,000][nmt.trainer][INFO] - update 10 epoch 1 | loss 7.1 nll 7.0 ppl 1100.0 | lr 1.00e-03 | 1500 tgt tok/s | grad norm 2.00 | pad 8.0%
[2026-11-29 23:43:30,000][nmt.trainer][INFO] - update 20 epoch 1 | loss 6.1 nll 6.0 ppl 400.0 | lr 1.00e-03 | 2000 tgt tok/s | grad norm 1.00 | pad 8.1%
[2026-11-29 23:43:35,500][nmt.trainer][INFO] - update 30 epoch 1 | loss 5.9 nll 5.8 ppl 330.0 | lr 1.00e-03 | 4000 tgt tok/s | grad norm 1.00 | pad 7.9%
"""

ONMT_LOG = """\
[2026-11-29 23:37:22,643 INFO] Start training loop without validation...
[2026-11-29 23:38:00,000 INFO] Step 10/100000000; acc: 5.1; ppl: 3000.2; xent: 8.0; lr: 0.00100; sents:    1200; bsz: 2100/2000/120; 1500/1400 tok/s;     38 sec;
[2026-11-29 23:38:10,000 INFO] Step 20/100000000; acc: 9.0; ppl: 900.0; xent: 6.8; lr: 0.00100; sents:    1180; bsz: 2150/1990/118; 2150/1990 tok/s;     48 sec;
[2026-11-29 23:38:20,000 INFO] Step 30; acc: 9.0; ppl: 900.0; xent: 6.8; lr: 0.00100; sents:    1180; bsz: 2150/2010/118; 2150/2010 tok/s;     58 sec;
"""


def test_parse_reports(peers: ModuleType) -> None:
    nmt = peers.parse_reports(NMT_LOG, "nmt")
    assert [(r.update, r.tgt_tok_s) for r in nmt] == [(10, 1500.0), (20, 2000.0), (30, 4000.0)]
    assert nmt[1].time - nmt[0].time == pytest.approx(10.0)
    assert nmt[2].time - nmt[1].time == pytest.approx(5.5)
    onmt = peers.parse_reports(ONMT_LOG, "onmt")
    assert [(r.update, r.tgt_tok_s) for r in onmt] == [(10, 1400.0), (20, 1990.0), (30, 2010.0)]
    assert peers.parse_reports(ONMT_LOG, "nmt") == []


def test_throughput_excludes_first_interval_and_warmup(peers: ModuleType) -> None:
    reports = peers.parse_reports(NMT_LOG, "nmt")
    all_but_first = peers.throughput(reports, 0.0)
    # intervals (10 s at 2000 tok/s, 10 updates) and (5.5 s at 4000 tok/s, 10 updates)
    assert all_but_first["measured_s"] == pytest.approx(15.5)
    assert all_but_first["tgt_tok_s"] == pytest.approx((20000 + 22000) / 15.5)
    assert all_but_first["tgt_tokens_per_update"] == pytest.approx(42000 / 20)
    assert all_but_first["updates_per_s"] == pytest.approx(20 / 15.5)
    warm = peers.throughput(reports, 5.0)  # the interval starting at the first report goes
    assert warm["measured_updates"] == 10
    assert warm["tgt_tok_s"] == pytest.approx(4000.0)
    assert peers.throughput(reports, 60.0) is None
    assert peers.throughput(reports[:1], 0.0) is None


def test_vocab_lines(peers: ModuleType) -> None:
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "a", "b", "c", "d"]
    counts = np.array([0, 5, 9, 9, 3, 0, 7, 3])
    lines = peers.vocab_lines(counts, pieces, skip=(0, 1, 2, 3))
    assert lines == ["c\t7", "a\t3", "d\t3"]  # unused "b" and the specials are left out


def test_closest_and_ratio(peers: ModuleType) -> None:
    rows = [
        {"batch_size": 2600, "tgt_tokens_per_batch": 1943.0},
        {"batch_size": 2700, "tgt_tokens_per_batch": 2010.0},
        {"batch_size": 2800, "tgt_tokens_per_batch": 2080.0},
    ]
    assert peers.closest(rows, 2013.0)["batch_size"] == 2700
    assert peers.ratio(2.0, 4.0) == 0.5
    assert peers.ratio(None, 4.0) is None and peers.ratio(2.0, 0.0) is None
    assert peers.median_or_none([None, 3.0, 1.0, 2.0]) == 2.0
    assert peers.median_or_none([None]) is None


def test_int8_rows_are_set_against_onmt_float_decoding(peers: ModuleType) -> None:
    def arm(sps: float) -> dict:
        return {"sentences_per_s": sps, "mean_output_tokens": 30.0, "bleu": 20.0}

    rounds = [
        {
            "nmt": {"decode": {"beam5": arm(10.0), "beam5_int8": arm(15.0)}},
            "onmt": {"decode": {"beam5": arm(5.0)}},
        },
        {
            "nmt": {"decode": {"beam5": arm(12.0), "beam5_int8": arm(17.0)}},
            "onmt": {"decode": {"beam5": arm(7.0)}},
        },
    ]
    s = peers.summarise(rounds)
    assert s["decode.beam5.sentences_per_s"]["ratio_nmt_over_onmt"] == 11.0 / 6.0
    int8 = s["decode.beam5_int8.sentences_per_s"]
    assert int8["rounds"]["onmt"] == [5.0, 7.0]
    assert int8["ratio_nmt_over_onmt"] == 16.0 / 6.0
    assert s["decode.greedy_int8.sentences_per_s"]["ratio_nmt_over_onmt"] is None


def test_redecode_plan_finds_each_runs_checkpoint(peers: ModuleType, tmp_path: Path) -> None:
    """``--decode-from``: each round's checkpoints, next to their training logs, in the
    round's alternating order, with the training results kept."""
    rounds = []
    for r in range(2):
        done = {}
        for tk in ("nmt", "onmt"):
            run = tmp_path / f"round{r + 1}-{tk}"
            run.mkdir()
            if tk == "nmt":
                (run / "last.pt").write_bytes(b"x")
            else:
                for step in (563, 100):  # the last step's is the trained model
                    (run / f"model_step_{step}.pt").write_bytes(b"x")
            done[tk] = {"train": {"log": str(run / "train.out"), "updates": 10 + r}}
        rounds.append(done)
    plan = peers.redecode_plan({"rounds": rounds})
    assert [[tk for tk, _, _ in arms] for arms in plan] == [["nmt", "onmt"], ["onmt", "nmt"]]
    assert plan[1][1][1] == {"log": str(tmp_path / "round2-nmt" / "train.out"), "updates": 11}
    assert plan[0][0][2] == tmp_path / "round1-nmt" / "last.pt"
    assert plan[0][1][2] == tmp_path / "round1-onmt" / "model_step_563.pt"
    (tmp_path / "round2-nmt" / "last.pt").unlink()
    with pytest.raises(SystemExit, match="round 2 nmt: no checkpoint"):
        peers.redecode_plan({"rounds": rounds})
