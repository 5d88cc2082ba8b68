"""Validation and model selection: dev loss, dev translation scored with sacrebleu, the
best-N checkpoints, and the final test score."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from typing import Any, Literal

import torch

from nmt import distributed as dist_utils
from nmt.batching import BucketBatchSampler
from nmt.checkpoint import (
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from nmt.config import TrainConfig
from nmt.data import ParallelDataset, Prepared, collate_indices
from nmt.device import (
    real_rows,
    to_device,
)
from nmt.loss import Criterion
from nmt.metrics import score
from nmt.model import Seq2Seq
from nmt.run import (
    Run,
    write_json,
)
from nmt.runtime import autocast
from nmt.translation import best_texts, translate_lines

log = logging.getLogger(__name__)


def metric_mode(metric: str) -> Literal["min", "max"]:
    return "min" if metric == "loss" else "max"


def improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric_mode(metric) == "min" else value > best


def dev_loss(
    model: Seq2Seq,
    dataset: ParallelDataset,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    max_tokens: int,
    device: torch.device,
    precision: str,
) -> float:
    """Mean NLL per real target token over ``dataset`` (no smoothing)."""
    criterion = Criterion(model, smoothing=0.0)
    sampler = BucketBatchSampler(
        dataset.src_lengths, dataset.tgt_lengths, max_tokens=max_tokens, shuffle=False
    )
    total = torch.zeros((), dtype=torch.float64, device=device)  # read once, at the end
    count = 0
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        for idx in sampler:
            cpu = collate_indices(dataset, idx, pad_id, bos_id, eos_id)
            b = to_device(cpu, device)
            real = real_rows(cpu.tgt_out, pad_id, device)
            loss, _ = criterion(b.src, b.src_lengths, b.tgt_in, b.tgt_out, real)
            total += loss.double()
            count += b.n_tgt_tokens
    return float(total) / max(count, 1)


def validate(
    model: Seq2Seq, prepared: Prepared, cfg: TrainConfig, device: torch.device
) -> dict[str, Any]:
    """Dev loss/perplexity and dev translation scored with sacrebleu against raw references."""
    tok = prepared.tokenizer
    dataset = prepared.dataset("dev")
    src_lines, ref_lines = prepared.raw("dev")
    n = cfg.trainer.valid_max_sentences
    if n > 0:
        src_lines, ref_lines = src_lines[:n], ref_lines[:n]
    start = time.perf_counter()
    loss = dev_loss(
        model,
        dataset,
        tok.pad_id,
        tok.bos_id,
        tok.eos_id,
        cfg.trainer.max_tokens,
        device,
        cfg.trainer.precision,
    )
    decode = replace(cfg.decode, beam_size=cfg.trainer.valid_beam_size, nbest=1)
    hyps = translate_lines(model, tok, src_lines, decode, device)
    texts = best_texts(tok, src_lines, hyps)
    scores = score(texts, ref_lines, ("bleu", "chrf"), cfg.data.tgt, cfg.metrics)
    model.train()
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        **scores,
        "hyps": texts,
        "srcs": src_lines,
        "refs": ref_lines,
        "seconds": time.perf_counter() - start,
    }


def run_validation(run: Run) -> None:
    """Rank 0 validates and saves; every rank gets the metric and updates the same state."""
    cfg, state = run.cfg, run.state
    metric_name = cfg.trainer.early_stop_metric
    value = 0.0
    if run.is_main:
        res = validate(run.model, run.prepared, cfg, run.device)
        value = res[metric_name]
        log.info(
            "validation at update %d: loss %.3f ppl %.2f | BLEU %.2f chrF %.2f (%.0fs) | %s",
            state.update,
            res["loss"],
            res["ppl"],
            res["bleu"],
            res["chrf"],
            res["seconds"],
            res["bleu_signature"],
        )
        run.get_monitor().validation(res, run.model, run.prepared, run.device, state.update)
    value = dist_utils.broadcast_float(run.ctx, value)
    state.valid_update = state.update
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(value)
    if improved(value, state.best, metric_name):
        state.best, state.best_update, state.bad_validations = value, state.update, 0
        if run.is_main:
            save_best(run, value)
    else:
        state.bad_validations += 1
        log.info(
            "no improvement of %s (best %.3f at update %d): %d/%s",
            metric_name,
            state.best or 0.0,
            state.best_update,
            state.bad_validations,
            cfg.trainer.patience or "-",
        )


def save_best(run: Run, value: float) -> None:
    """``best.pt`` plus the best N model-only checkpoints ``ckpt_u{update}.pt``."""
    cfg, state, out_dir = run.cfg, run.state, run.out_dir
    payload = model_payload(run.model, cfg.model, run.prepared.tokenizer)
    payload["train_config"] = asdict(cfg)
    payload["metric"] = {cfg.trainer.early_stop_metric: value, "update": state.update}
    save_checkpoint(out_dir / "best.pt", payload)
    keep = cfg.trainer.keep_best
    if keep <= 0:
        return
    name = f"ckpt_u{state.update}.pt"
    save_checkpoint(out_dir / name, payload)
    state.kept = [kv for kv in state.kept if kv[1] != name] + [[value, name]]
    reverse = metric_mode(cfg.trainer.early_stop_metric) == "max"
    state.kept.sort(key=lambda kv: kv[0], reverse=reverse)
    for _, old in state.kept[keep:]:  # only files this run wrote, in this directory
        (out_dir / old).unlink(missing_ok=True)
    state.kept = state.kept[:keep]


def evaluate_test(run: Run) -> dict[str, Any]:
    """Translate the test split with the best checkpoint (beam search) and score it."""
    cfg, model, prepared, out_dir = run.cfg, run.model, run.prepared, run.out_dir
    best = out_dir / "best.pt"
    if best.is_file():
        model.load_state_dict(load_checkpoint(best)["model"])
    model.eval()
    src, ref = prepared.raw("test")
    hyps = translate_lines(model, prepared.tokenizer, src, cfg.decode, run.device)
    texts = best_texts(prepared.tokenizer, src, hyps)
    hyp_path = out_dir / f"test.hyp.{cfg.data.tgt}"
    hyp_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    scores = score(texts, ref, ("bleu", "chrf"), cfg.data.tgt, cfg.metrics)
    scores["translations"] = str(hyp_path)
    scores["checkpoint"] = str(best if best.is_file() else out_dir / "last.pt")
    scores["beam_size"] = cfg.decode.beam_size
    write_json(out_dir / "test_scores.json", scores)
    return scores
