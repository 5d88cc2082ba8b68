"""``python -m nmt.evaluate ckpt=PATH src=FILE ref=FILE``: translate and score with sacrebleu.

Prints BLEU, chrF and TER with their signatures; writes them as JSON (``json_output``) and the
translations (``hyp_output``) when asked.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from nmt.config import EvaluateConfig

ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def run(cfg: EvaluateConfig) -> dict:
    from nmt.checkpoint import load_for_decoding
    from nmt.metrics import score
    from nmt.quantize import quantize_model
    from nmt.runtime import pick_device, tune_malloc
    from nmt.search import translate_lines
    from nmt.translate import InputError, check_writable, read_lines, write_lines

    tune_malloc()
    check_writable("hyp_output", cfg.hyp_output)
    check_writable("json_output", cfg.json_output)

    src, ref = read_lines(cfg.src), read_lines(cfg.ref)
    if len(src) != len(ref):
        raise InputError(f"{cfg.src} has {len(src)} lines but {cfg.ref} has {len(ref)}")
    device = pick_device("cpu" if cfg.quantize != "none" and cfg.device == "auto" else cfg.device)
    model, tokenizer = load_for_decoding(cfg.ckpt, device)
    model = quantize_model(model, cfg.quantize)
    hyps = translate_lines(
        model, tokenizer, src, cfg.decode, device, progress=cfg.progress and sys.stderr.isatty()
    )
    texts = tokenizer.decode_tgt([h[0].tokens for h in hyps])
    texts = [t if s.strip() else "" for t, s in zip(texts, src, strict=True)]
    scores = score(texts, ref, ("bleu", "chrf", "ter"))
    scores.update(
        {
            "ckpt": cfg.ckpt,
            "src": cfg.src,
            "ref": cfg.ref,
            "beam_size": cfg.decode.beam_size,
            "sentences": len(src),
        }
    )
    if cfg.hyp_output:
        write_lines(cfg.hyp_output, texts)
    if cfg.json_output:
        Path(cfg.json_output).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(dcfg: DictConfig) -> None:
    from nmt.checkpoint import CheckpointError
    from nmt.translate import InputError

    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        cfg: EvaluateConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        s = run(cfg)
    except (InputError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"BLEU {s['bleu']:.2f}  {s['bleu_signature']}")
    print(f"chrF {s['chrf']:.2f}  {s['chrf_signature']}")
    print(f"TER  {s['ter']:.2f}  {s['ter_signature']}")


if __name__ == "__main__":
    main()
