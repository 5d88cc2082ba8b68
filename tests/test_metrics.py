"""nmt.metrics against sacrebleu's own corpus functions and hand-computed values."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from nmt.metrics import score

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
