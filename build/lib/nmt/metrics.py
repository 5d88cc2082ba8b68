"""Corpus-level translation metrics via sacrebleu: BLEU, chrF and TER with their signatures.

The signature string (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``)
records every setting the score depends on; log it next to the score so numbers stay comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

METRICS: tuple[str, ...] = ("bleu", "chrf", "ter")


def _make_metric(name: str) -> Metric:
    """A fresh sacrebleu metric object with its default settings (13a BLEU, chrF2, TER)."""
    if name == "bleu":
        return BLEU()
    if name == "chrf":
        return CHRF()
    if name == "ter":
        return TER()
    raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def score(
    hyps: list[str], refs: list[str], metrics: Sequence[str] = ("bleu", "chrf")
) -> dict[str, float | str]:
    """Score detokenised hypotheses against one reference per line.

    Returns ``{name: score, f"{name}_signature": signature}`` for each requested metric, e.g.
    ``{"bleu": 23.4, "bleu_signature": "nrefs:1|case:mixed|...", "chrf": 51.2, ...}``.
    Scores are on sacrebleu's 0-100 scale (TER: lower is better).
    """
    if len(hyps) != len(refs):
        raise ValueError(
            f"hypotheses and references differ in length: {len(hyps)} hypotheses, "
            f"{len(refs)} references"
        )
    if not hyps:
        raise ValueError("nothing to score: no hypotheses and no references")
    names = list(metrics)
    for name in names:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    result: dict[str, float | str] = {}
    for name in names:
        metric = _make_metric(name)
        result[name] = float(metric.corpus_score(hyps, [refs]).score)
        result[f"{name}_signature"] = str(metric.get_signature())
    return result
