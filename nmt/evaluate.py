"""``python -m nmt.evaluate``: score translations with sacrebleu, as sacrebleu's own CLI would.

* ``ckpt=PATH src=FILE ref=FILE``: translate ``src`` with the checkpoint, then score;
* ``hyp=FILE ref=FILE``: score a hypothesis file as it is (no checkpoint);
* ``ref=A,B``: several references (sacrebleu's multi-reference scores, ``nrefs:2``);
* ``hyp=BASE,NEW[,...] paired=bs|ar``: compare systems with sacrebleu's paired bootstrap
  resampling or approximate randomisation (the first system is the baseline; a checkpoint's
  translation joins the comparison as the last system).

Metric settings follow the target language: ``metrics.lang``, else the checkpoint's
``data.tgt``, else the first reference file's suffix (``test.ja`` -> ``ja``); see
``nmt.metrics``. Prints sacrebleu's text lines (a table for paired tests); ``json_output``
gets sacrebleu's JSON: a list with one dict per metric (``sacrebleu -f json``), or for paired
tests one dict per system (``sacrebleu --paired-bs -f json``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from nmt.cli import log_to_stderr, to_config, user_errors
from nmt.config import EvaluateConfig

ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
log = logging.getLogger("nmt.evaluate")


def _paths(spec: str | None) -> list[str]:
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def checkpoint_language(spec: str) -> str:
    """The target language the (first) checkpoint was trained for; "" if it does not say."""
    from nmt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(_paths(spec)[0])
    data = (ckpt.get("train_config") or {}).get("data") or {}
    return str(data.get("tgt") or "")


def translate_file(cfg: EvaluateConfig) -> list[str]:
    """Translate ``cfg.src`` with ``cfg.ckpt``; detokenised lines (empty in, empty out)."""
    from nmt.quantize import quantize_model
    from nmt.runtime import pick_device, tune_malloc
    from nmt.translate import read_lines
    from nmt.translation import best_texts, load_for_decoding, translate_lines

    tune_malloc()
    assert cfg.ckpt is not None and cfg.src is not None
    src = read_lines(cfg.src)
    device = pick_device("cpu" if cfg.quantize != "none" and cfg.device == "auto" else cfg.device)
    model, tokenizer = load_for_decoding(cfg.ckpt, device)
    model = quantize_model(model, cfg.quantize)
    hyps = translate_lines(
        model, tokenizer, src, cfg.decode, device, progress=cfg.progress and sys.stderr.isatty()
    )
    return best_texts(tokenizer, src, hyps)


def run(cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], str]:
    """Score (or compare) as asked; returns sacrebleu's JSON object and the text to print."""
    from nmt.metrics import language_code, paired_test, sacrebleu_json
    from nmt.translate import InputError, check_writable, read_lines, write_lines

    check_writable("hyp_output", cfg.hyp_output)
    check_writable("json_output", cfg.json_output)
    ref_paths = _paths(cfg.ref)
    if not ref_paths:
        raise InputError("ref: no reference file given")
    refs = [read_lines(p) for p in ref_paths]
    for p, r in zip(ref_paths[1:], refs[1:], strict=True):
        if len(r) != len(refs[0]):
            raise InputError(f"{p} has {len(r)} lines but {ref_paths[0]} has {len(refs[0])}")
    if cfg.src and not cfg.ckpt:
        raise InputError("src: only used with ckpt= (to score a file as it is, give hyp=FILE)")
    if cfg.ckpt and not cfg.src:
        raise InputError("ckpt: needs src=FILE, the source text to translate")
    systems = [(p, read_lines(p)) for p in _paths(cfg.hyp)]
    lang, origin = cfg.metrics.lang or "", "metrics.lang"
    if cfg.ckpt:
        assert cfg.src is not None
        src_len = len(read_lines(cfg.src))
        if src_len != len(refs[0]):
            raise InputError(f"{cfg.src} has {src_len} lines but {ref_paths[0]} has {len(refs[0])}")
        if not lang:
            lang, origin = checkpoint_language(cfg.ckpt), "the checkpoint's data.tgt"
        texts = translate_file(cfg)
        if cfg.hyp_output:
            write_lines(cfg.hyp_output, texts)
        systems.append((cfg.ckpt, texts))
    if not systems:
        raise InputError("nothing to score: give hyp=FILE, or ckpt=PATH src=FILE to translate")
    for name, lines in systems:
        if len(lines) != len(refs[0]):
            raise InputError(f"{name} has {len(lines)} lines but {ref_paths[0]} has {len(refs[0])}")
    if not lang:
        lang, origin = Path(ref_paths[0]).suffix.lstrip("."), f"the suffix of {ref_paths[0]}"
    log.info("target language %r (from %s)", language_code(lang), origin)

    if cfg.paired:
        if len(systems) < 2:
            raise InputError("paired: needs two systems or more (hyp=BASE,NEW or hyp=BASE ckpt=)")
        rows, sigs = paired_test(
            systems, refs, cfg.paired, cfg.paired_n, cfg.metric_names, lang, cfg.metrics
        )
        return rows, format_paired(rows, sigs, cfg.paired)
    if len(systems) > 1:
        raise InputError(
            f"{len(systems)} systems: add paired=bs or paired=ar to compare them, or score one"
        )
    result = sacrebleu_json(
        systems[0][1], refs, cfg.metric_names, lang, cfg.metrics, cfg.confidence_n, cfg.width
    )
    return result, "\n".join(format_line(d) for d in result)


def format_line(d: dict[str, Any]) -> str:
    """sacrebleu's text line: ``BLEU|nrefs:1|...|version:2.6.0 = 23.4 58.1/30.2/...``."""
    line = f"{d['name']}|{d['signature']} = {d['score']}"
    if "confidence" in d:
        line += f" ({d['confidence']})"
    if "verbose_score" in d:
        line += f" {d['verbose_score']}"
    return line


def format_paired(rows: list[dict[str, Any]], sigs: dict[str, str], test: str) -> str:
    """One line per system and metric, then the signatures: what sacrebleu's table says."""
    what = "paired bootstrap resampling" if test == "bs" else "approximate randomization"
    out = [f"{what}; each system against the baseline (p: how often chance alone gives the gap)"]
    for row in rows:
        out.append(row["system"])
        for key, res in row.items():
            if key == "system":
                continue
            text = f"  {key:6s} {res['score']:6.2f}"
            if res["mean"] is not None:
                text += f"  (mu = {res['mean']:.2f} +- {res['ci']:.2f})"
            if res["p_value"] is not None:
                text += f"  p = {res['p_value']:.4f}" + ("*" if res["p_value"] < 0.05 else "")
            out.append(text)
    out += [f"{name}|{sig}" for name, sig in sigs.items()]
    out.append("* p < 0.05: the difference from the baseline is significant")
    return "\n".join(out)


def main() -> None:
    """``nmt-evaluate`` / ``python -m nmt.evaluate``."""
    sys.argv = quote_path_lists(sys.argv)
    _main()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def _main(dcfg: DictConfig) -> None:
    from nmt.checkpoint import CheckpointError
    from nmt.translate import InputError

    log_to_stderr()
    with user_errors(InputError, CheckpointError, ValueError):
        cfg = to_config(dcfg, EvaluateConfig)
        result, text = run(cfg)
    if cfg.json_output:
        Path(cfg.json_output).write_text(
            json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    print(text, flush=True)


def quote_path_lists(argv: list[str], keys: tuple[str, ...] = ("ref", "hyp", "ckpt")) -> list[str]:
    """Hydra reads ``ref=a.en,b.en`` as a sweep over two values; these keys take comma-joined
    paths, so such a value is handed to Hydra as one quoted string (``ref='a.en,b.en'``)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in keys and "," in value and value[:1] not in "'\"[" and "'" not in value:
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


if __name__ == "__main__":
    main()
