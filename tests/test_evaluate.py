"""nmt.evaluate: scoring files or a checkpoint's output, several references, paired tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.checkpoint import load_checkpoint, save_checkpoint
from nmt.config import DecodeConfig, EvaluateConfig, MetricsConfig
from nmt.evaluate import quote_path_lists, run
from nmt.translate import InputError

ROOT = Path(__file__).resolve().parents[1]
REF1 = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
    "And the evening and the morning were the first day.",
    "Amen.",
]
REF2 = [
    "In the beginning God made heaven and earth.",
    "God said: Let there be light, and there was light.",
    "God saw that the light was good.",
    "There was evening and morning, the first day.",
    "Amen.",
]
BASE = [
    "At the beginning God created the sky and the earth.",
    "And God said, let there be light; and light was.",
    "God saw the light, that was good.",
    "And evening and morning were the day first.",
    "Amen.",
]
NEW = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
    "And the evening and morning were the first day.",
    "Amen!",
]


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    for name, lines in {"test.en": REF1, "test2.en": REF2, "base.en": BASE, "new.en": NEW}.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nmt.evaluate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_readme_score_a_file_with_two_references(files: Path) -> None:
    """README: ``nmt.evaluate hyp=new.en ref=test.en,test2.en json_output=scores.json``."""
    r = cli("hyp=new.en", "ref=test.en,test2.en", "json_output=scores.json", cwd=files)
    assert r.returncode == 0, r.stderr
    theirs = subprocess.run(
        [sys.executable, "-m", "sacrebleu", "test.en", "test2.en", "-i", "new.en"]
        + ["-m", "bleu", "chrf", "ter", "-f", "json"],
        cwd=files,
        capture_output=True,
        text=True,
        check=True,
    )
    ours = json.loads((files / "scores.json").read_text(encoding="utf-8"))
    assert ours == json.loads(theirs.stdout)
    assert ours[0]["nrefs"] == "2" and ours[0]["tok"] == "13a"
    lines = r.stdout.splitlines()
    assert lines[0].startswith("BLEU|nrefs:2|case:mixed|eff:no|tok:13a|") and " = " in lines[0]
    assert lines[1].startswith("chrF2|nrefs:2") and lines[2].startswith("TER|nrefs:2")


def test_readme_paired_bootstrap_equals_sacrebleus_api(files: Path) -> None:
    """README: ``nmt.evaluate hyp=base.en,new.en ref=test.en paired=bs json_output=...``."""
    r = cli("hyp=base.en,new.en", "ref=test.en", "paired=bs", "json_output=compare.json", cwd=files)
    assert r.returncode == 0, r.stderr
    rows = json.loads((files / "compare.json").read_text(encoding="utf-8"))
    metrics = {n: m(references=[REF1]) for n, m in (("BLEU", BLEU), ("CHRF", CHRF), ("TER", TER))}
    sigs, table = PairedTest(
        [("Baseline: base.en", BASE), ("new.en", NEW)], metrics, None, test_type="bs"
    )()
    assert [row["system"] for row in rows] == table["System"]
    for i, row in enumerate(rows):
        assert list(row) == ["system", "BLEU", "chrF2", "TER"]
        for key in ("BLEU", "chrF2", "TER"):
            want = vars(table[key][i])
            assert row[key].keys() == want.keys()
            for field, value in want.items():
                assert row[key][field] == (None if value is None else pytest.approx(float(value)))
    assert rows[1]["BLEU"]["score"] > rows[0]["BLEU"]["score"]
    for sig in sigs.values():
        assert sig.format() in r.stdout
    assert "paired bootstrap resampling" in r.stdout and "p = " in r.stdout


def test_approximate_randomisation_equals_sacrebleus_api(files: Path) -> None:
    cfg = EvaluateConfig(
        ref=f"{files}/test.en,{files}/test2.en",
        hyp=f"{files}/base.en,{files}/new.en",
        paired="ar",
        paired_n=2000,
        metric_names=["bleu"],
    )
    rows, text = run(cfg)
    refs = [REF1, REF2]
    _, table = PairedTest(
        [(f"Baseline: {files}/base.en", BASE), (f"{files}/new.en", NEW)],
        {"BLEU": BLEU(references=refs)},
        None,
        test_type="ar",
        n_samples=2000,
    )()
    assert rows[1]["BLEU"]["p_value"] == pytest.approx(float(table["BLEU"][1].p_value))
    assert rows[1]["BLEU"]["mean"] is None  # sacrebleu gives no CI under AR by default
    assert "ar:2000" in text and "nrefs:2" in text


def test_checkpoint_translation_scored_and_language_from_checkpoint(
    tiny_ckpt, tmp_path: Path
) -> None:
    src, ref = tiny_ckpt.dir / "test.es", tiny_ckpt.dir / "test.en"
    cfg = EvaluateConfig(
        ref=str(ref),
        ckpt=str(tiny_ckpt.path),
        src=str(src),
        hyp_output=str(tmp_path / "hyp.en"),
        decode=DecodeConfig(beam_size=2, max_len_b=3),
        device="cpu",
        progress=False,
    )
    result, _ = run(cfg)
    hyps = (tmp_path / "hyp.en").read_text(encoding="utf-8").splitlines()
    refs = ref.read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs)
    assert result[0]["score"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 1)
    assert result[0]["tok"] == "13a"

    # the same checkpoint, declared as trained for Chinese: BLEU switches to sacrebleu's zh
    ckpt = load_checkpoint(tiny_ckpt.path)
    ckpt["train_config"]["data"]["tgt"] = "zh"
    zh = tmp_path / "zh.pt"
    save_checkpoint(zh, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    cfg.ckpt, cfg.metric_names = str(zh), ["bleu"]
    result, _ = run(cfg)
    assert result[0]["tok"] == "zh"
    cfg.metrics = MetricsConfig(tokenize="intl")  # the override key wins
    assert run(cfg)[0][0]["tok"] == "intl"

    # a checkpoint's translation joins a paired comparison as the last system
    cfg.hyp, cfg.paired, cfg.paired_n, cfg.metrics = str(ref), "bs", 100, MetricsConfig()
    rows, _ = run(cfg)
    assert [row["system"] for row in rows] == [f"Baseline: {ref}", str(zh)]
    assert rows[0]["BLEU"]["score"] == pytest.approx(100.0)


def test_language_from_reference_suffix(tmp_path: Path) -> None:
    (tmp_path / "hyp.ja").write_text("今日は良い天気です。\n", encoding="utf-8")
    (tmp_path / "ref.ja").write_text("今日はいい天気ですね。\n", encoding="utf-8")
    cfg = EvaluateConfig(ref=f"{tmp_path}/ref.ja", hyp=f"{tmp_path}/hyp.ja", metric_names=["bleu"])
    (bleu,) = run(cfg)[0]
    assert bleu["tok"].startswith("ja-mecab-")
    cfg.metrics = MetricsConfig(lang="en")
    assert run(cfg)[0][0]["tok"] == "13a"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hyp=missing.en", "ref=test.en"], "missing.en: cannot read input"),
        (["hyp=short.en", "ref=test.en"], "short.en has 2 lines but test.en has 5"),
        (["hyp=new.en", "ref=test.en,short.en"], "short.en has 2 lines but test.en has 5"),
        (["hyp=base.en,new.en", "ref=test.en"], "2 systems: add paired=bs or paired=ar"),
        (["hyp=new.en", "ref=test.en", "paired=bs"], "paired: needs two systems or more"),
        (["hyp=base.en,new.en", "ref=test.en", "paired=xx"], "paired=xx: unknown value"),
        (["src=base.en", "ref=test.en"], "src: only used with ckpt="),
        (["ref=test.en"], "nothing to score: give hyp=FILE"),
        (["hyp=new.en", "ref=test.en", "metrics.tokenize=moses"], "unknown tokenizer 'moses'"),
        (
            ["hyp=new.en", "ref=test.en", "metric_names=[bleu,meteor]"],
            "metric_names=meteor: unknown",
        ),
    ],
)
def test_bad_input_is_a_clear_error(
    files: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    (files / "short.en").write_text("a\nb\n", encoding="utf-8")
    monkeypatch.chdir(files)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        dcfg = compose("evaluate", overrides=quote_path_lists(args))
    with pytest.raises((InputError, ValueError)) as err:
        cfg = OmegaConf.to_object(dcfg)
        assert isinstance(cfg, EvaluateConfig)
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_input_exits_2_with_one_line(files: Path) -> None:
    r = cli("hyp=new.en", "ref=test.en,nothere.en", cwd=files)
    assert r.returncode == 2
    assert (
        r.stderr.strip().splitlines()[-1]
        == "error: nothere.en: cannot read input (No such file or directory)"
    )


def test_comma_joined_paths_reach_hydra_as_one_value() -> None:
    assert quote_path_lists(["x", "ref=a.en,b.en", "hyp=c", "decode.beam_size=5"]) == [
        "x",
        "ref='a.en,b.en'",
        "hyp=c",
        "decode.beam_size=5",
    ]
    assert quote_path_lists(["metric_names=[bleu,chrf]"]) == ["metric_names=[bleu,chrf]"]


def test_cjk_metrics_need_no_network(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # (keeps the thread count of the suite)
    (tmp_path / "h.ko").write_text("오늘은 날씨가 좋습니다.\n", encoding="utf-8")
    (tmp_path / "r.ko").write_text("오늘 날씨가 좋네요.\n", encoding="utf-8")
    cfg = EvaluateConfig(ref=f"{tmp_path}/r.ko", hyp=f"{tmp_path}/h.ko", metric_names=["bleu"])
    assert run(cfg)[0][0]["tok"].startswith("ko-mecab-")
