"""nmt.metrics against sacrebleu's own corpus functions and hand-computed values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

from nmt.compose import compose_train as _compose_train
from nmt.config import MetricsConfig
from nmt.metrics import MetricError, check_settings, paired_test, sacrebleu_json, score

HYPS = [
    "The cat sat on the mat.",
    "A dog barked loudly at the mailman",
    "It is raining today, isn't it?",
    "",
]
REFS = [
    "The cat sat on a mat.",
    "The dog barked at the postman loudly.",
    "It rains today, doesn't it?",
    "Nothing here.",
]


def test_matches_sacrebleu_corpus_functions() -> None:
    out = score(HYPS, REFS, metrics=("bleu", "chrf", "ter"))
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert out["ter"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)
    assert 0.0 < float(out["bleu"]) < 100.0


def test_signatures_present_and_describe_settings() -> None:
    out = score(HYPS, REFS, metrics=("bleu", "chrf", "ter"))
    bleu_sig = str(out["bleu_signature"])
    assert "nrefs:1" in bleu_sig and "tok:13a" in bleu_sig and "smooth:exp" in bleu_sig
    assert f"version:{sacrebleu.__version__}" in bleu_sig
    assert "nc:6" in str(out["chrf_signature"])
    assert "tok:tercom" in str(out["ter_signature"])


def test_default_metrics_are_bleu_and_chrf() -> None:
    out = score(HYPS, REFS)
    assert set(out) == {"bleu", "bleu_signature", "chrf", "chrf_signature"}


def test_identical_hypotheses_score_perfectly() -> None:
    lines = ["a small test sentence .", "another one , longer than the first ."]
    out = score(lines, lines, metrics=("bleu", "chrf", "ter"))
    assert out["bleu"] == pytest.approx(100.0)
    assert out["chrf"] == pytest.approx(100.0)
    assert out["ter"] == pytest.approx(0.0)


def test_hand_computed_brevity_penalty_and_one_insertion() -> None:
    # Every n-gram of the hypothesis matches, so BLEU = brevity penalty = exp(1 - 5/4);
    # TER needs one insertion over a 5-word reference = 20.
    out = score(["a b c d"], ["a b c d e"], metrics=("bleu", "ter"))
    assert out["bleu"] == pytest.approx(100.0 * math.exp(1.0 - 5.0 / 4.0))
    assert out["ter"] == pytest.approx(20.0)


def test_length_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="3 hypotheses, 2 references"):
        score(["a", "b", "c"], ["a", "b"])


def test_unknown_metric_and_empty_input_rejected() -> None:
    with pytest.raises(ValueError, match="unknown metric 'meteor'"):
        score(["a"], ["a"], metrics=("bleu", "meteor"))
    with pytest.raises(ValueError, match="nothing to score"):
        score([], [])


# ------------------------------------------------------------------ target language and refs

ZH_HYP = ["今天天气很好。", "我喜欢吃苹果和香蕉。"]
ZH_REF = ["今天天气不错。", "我喜欢吃香蕉和苹果。"]
JA_HYP = ["今日は良い天気です。", "私は猫が好きです。"]
JA_REF = ["今日はいい天気ですね。", "猫が好きです。"]
KO_HYP = ["오늘은 날씨가 좋습니다.", "나는 고양이를 좋아합니다."]
KO_REF = ["오늘 날씨가 좋네요.", "저는 고양이를 좋아해요."]


@pytest.mark.parametrize(
    ("lang", "hyps", "refs", "tok", "sig"),
    [
        ("zh", ZH_HYP, ZH_REF, "zh", "tok:zh"),
        ("zh-CN", ZH_HYP, ZH_REF, "zh", "tok:zh"),
        ("ja", JA_HYP, JA_REF, "ja-mecab", "tok:ja-mecab-"),
        ("ko", KO_HYP, KO_REF, "ko-mecab", "tok:ko-mecab-"),
        ("en", HYPS, REFS, "13a", "tok:13a"),
        ("", HYPS, REFS, "13a", "tok:13a"),
    ],
)
def test_bleu_tokenizer_follows_target_language(
    lang: str, hyps: list[str], refs: list[str], tok: str, sig: str
) -> None:
    out = score(hyps, refs, metrics=("bleu", "chrf"), lang=lang)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score)
    assert sig in str(out["bleu_signature"])
    # sacrebleu's own choice for the bare language code gives the same number
    assert out["bleu"] == pytest.approx(BLEU(trg_lang=lang[:2]).corpus_score(hyps, [refs]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


def test_cjk_tokenizer_changes_the_score() -> None:
    # unsegmented Chinese is one "word" per sentence for 13a: BLEU would be 0
    assert score(ZH_HYP, ZH_REF, ("bleu",), lang="en")["bleu"] == pytest.approx(0.0)
    assert score(ZH_HYP, ZH_REF, ("bleu",), lang="zh")["bleu"] > 20.0


def test_settings_override_the_language_default() -> None:
    out = score(ZH_HYP, ZH_REF, ("bleu",), lang="zh", settings=MetricsConfig(tokenize="char"))
    assert "tok:char" in str(out["bleu_signature"])
    assert out["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(ZH_HYP, [ZH_REF], tokenize="char").score
    )
    out = score(HYPS, REFS, ("bleu",), lang="en", settings=MetricsConfig(lang="ja"))
    assert "tok:ja-mecab" in str(out["bleu_signature"])
    s = MetricsConfig(
        lowercase=True, chrf_word_order=2, ter_asian_support=True, ter_normalized=True
    )
    out = score(ZH_HYP, ZH_REF, ("chrf", "ter"), settings=s)
    assert out["chrf"] == pytest.approx(
        CHRF(word_order=2, lowercase=True).corpus_score(ZH_HYP, [ZH_REF]).score
    )
    assert "nw:2" in str(out["chrf_signature"]) and "asian:yes" in str(out["ter_signature"])
    with pytest.raises(MetricError, match="metrics.tokenize: unknown tokenizer 'moses'"):
        score(HYPS, REFS, ("bleu",), settings=MetricsConfig(tokenize="moses"))


def test_missing_mecab_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from sacrebleu.tokenizers import tokenizer_ja_mecab, tokenizer_ko_mecab

    monkeypatch.setattr(tokenizer_ja_mecab, "MeCab", None)
    monkeypatch.setattr(tokenizer_ko_mecab, "MeCab", None)
    for lang, extra in (("ja", "nmt[ja]"), ("ko", "nmt[ko]")):
        with pytest.raises(MetricError) as err:
            check_settings(lang)
        msg = str(err.value)
        assert "\n" not in msg and extra in msg and "metrics.tokenize=char" in msg, msg
    check_settings("ja", MetricsConfig(tokenize="char"))  # the suggested way out works


def test_several_references_as_sacrebleu() -> None:
    refs2 = ["The cat sits on the mat.", "A dog barked at the mailman loudly.", "It's raining.", ""]
    out = score(HYPS, [REFS, refs2], metrics=("bleu", "chrf", "ter"))
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, refs2]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, refs2]).score)
    assert out["ter"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS, refs2]).score)
    assert "nrefs:2" in str(out["bleu_signature"])
    assert out["bleu"] > score(HYPS, REFS, ("bleu",))["bleu"]
    with pytest.raises(MetricError, match="4 hypotheses, 3 lines in reference 2"):
        score(HYPS, [REFS, refs2[:3]])


def test_json_is_sacrebleus_own(tmp_path: Path) -> None:
    refs2 = ["今日は晴れです。", "猫が大好きです。"]
    files = {"hyp": JA_HYP, "r1": JA_REF, "r2": refs2}
    for name, lines in files.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli = subprocess.run(
        [sys.executable, "-m", "sacrebleu", "r1", "r2", "-i", "hyp", "-l", "en-ja"]
        + ["-m", "bleu", "chrf", "ter", "-f", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    ours = sacrebleu_json(JA_HYP, [JA_REF, refs2], lang="ja")
    assert ours == json.loads(cli.stdout)
    assert [d["name"] for d in ours] == ["BLEU", "chrF2", "TER"]


def test_confidence_interval_as_sacrebleu() -> None:
    ours = sacrebleu_json(HYPS, REFS, ("bleu",), confidence_n=200, width=2)[0]
    theirs = BLEU().corpus_score(HYPS, [REFS], n_bootstrap=200)
    assert ours["confidence_mean"] == pytest.approx(round(theirs._mean, 2))
    assert ours["confidence_var"] == pytest.approx(round(theirs._ci, 2))


@pytest.mark.parametrize(("test", "n"), [("bs", 300), ("ar", 500)])
def test_paired_tests_equal_sacrebleus_api(test: str, n: int) -> None:
    from sacrebleu.significance import PairedTest

    a = ["The cat sat on a mat.", "The dog barked at the mailman", "It rains today", "Nothing"]
    systems = [("base", HYPS), ("new", a), ("copy", list(REFS))]
    rows, sigs = paired_test(systems, REFS, test=test, n_samples=n, metrics=("bleu", "chrf"))

    metrics = {"BLEU": BLEU(references=[REFS]), "CHRF": CHRF(references=[REFS])}
    named = [("Baseline: base", HYPS), ("new", a), ("copy", list(REFS))]
    want_sigs, table = PairedTest(named, metrics, None, test_type=test, n_samples=n)()
    assert [r["system"] for r in rows] == table["System"]
    for i, row in enumerate(rows):
        for key in ("BLEU", "chrF2"):
            res = table[key][i]
            for field in ("score", "p_value", "mean", "ci"):
                want = getattr(res, field)
                got = row[key][field]
                assert (got is None) == (want is None), (key, field)
                if want is not None:
                    assert got == pytest.approx(float(want))
    assert sigs == {k: v.format() for k, v in want_sigs.items()}
    assert f"{test}:{n}" in sigs["BLEU"] and "seed:12345" in sigs["BLEU"]
    assert rows[0]["BLEU"]["p_value"] is None and rows[2]["BLEU"]["p_value"] < 0.05
    if test == "bs":
        assert rows[1]["BLEU"]["ci"] is not None
    json.dumps(rows)  # plain floats: serialisable, unlike sacrebleu's own -f json here


def test_paired_test_rejects_bad_requests() -> None:
    with pytest.raises(MetricError, match="at least two systems"):
        paired_test([("a", HYPS)], REFS)
    with pytest.raises(MetricError, match="unknown test 'tt'"):
        paired_test([("a", HYPS), ("b", HYPS)], REFS, test="tt")
    with pytest.raises(MetricError, match="b: hypotheses and references differ"):
        paired_test([("a", HYPS), ("b", HYPS[:2])], REFS)


# ------------------------------------------------------------------------ in training


def test_training_scores_in_the_target_language(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Validation and the test report use data.tgt: a corpus whose target is called zh gets
    sacrebleu's zh tokenizer (the text is English here: only the setting is checked)."""
    from nmt.trainer import train

    root = Path(__file__).resolve().parents[1]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 200), ("dev", 8), ("test", 8)):
        for lang, name in (("es", "es"), ("en", "zh")):
            lines = (root / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            (corpus / f"{split}.{name}").write_text(
                "\n".join(lines.splitlines()[:n]) + "\n", encoding="utf-8"
            )
    cfg = _compose_train(
        [
            "data=demo_es_en",
            f"data.dir={corpus}",
            "data.tgt=zh",
            f"data.cache_dir={tmp_path / 'cache'}",
            "model=tiny",
            "tokenizer.vocab_size=200",
            "trainer.max_updates=2",
            "trainer.valid_every=2",
            "trainer.progress=false",
            "trainer.tensorboard=false",
            "decode.beam_size=1",
            "decode.max_len_b=2",
            "device=cpu",
        ]
    )
    with caplog.at_level("INFO", logger="nmt"):
        res = train(cfg, tmp_path / "run")
    assert "tok:zh" in res["test"]["bleu_signature"]
    report = json.loads((tmp_path / "run" / "test_scores.json").read_text())
    assert "tok:zh" in report["bleu_signature"]
    validations = [r.getMessage() for r in caplog.records if "validation at" in r.getMessage()]
    assert validations and all("tok:zh" in m for m in validations)


def test_training_stops_at_once_without_mecab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sacrebleu.tokenizers import tokenizer_ja_mecab

    from nmt.trainer import train

    monkeypatch.setattr(tokenizer_ja_mecab, "MeCab", None)
    cfg = _compose_train(["data.tgt=ja", f"data.dir={tmp_path}/none", "device=cpu"])
    with pytest.raises(MetricError, match=r"nmt\[ja\]"):
        train(cfg, tmp_path / "run")  # before any data is read
