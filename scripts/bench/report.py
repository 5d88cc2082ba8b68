"""The report side of scripts/benchmark.py: the machine, the ablation ratios, the notes, the
JSON and markdown files, and the markdown tables (from the report dict alone, so a saved JSON
report can be rendered again)."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .arms import ABLATIONS, Arm

log = logging.getLogger("benchmark")


def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in (
                "",
                platform.machine(),
                platform.processor(),
            ):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_bf16": sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "device": str(device),
        "load_avg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def compare(
    pairs: list[tuple[str, Arm, Arm]], results: dict[Arm, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each ablation as A / B ratios of target tokens/s and updates/s."""
    ablations = []
    for name, a, b in pairs:
        ra, rb = results[a], results[b]
        ok = "error" not in ra and "error" not in rb
        entry: dict[str, Any] = {
            "name": name,
            "a": ABLATIONS[name][3],
            "b": ABLATIONS[name][4],
            "a_run": a.describe(),
            "b_run": b.describe(),
            "a_tgt_tokens_per_s": ra.get("tgt_tokens_per_s"),
            "b_tgt_tokens_per_s": rb.get("tgt_tokens_per_s"),
            "a_peak_rss_mb": ra.get("peak_rss_mb"),
            "b_peak_rss_mb": rb.get("peak_rss_mb"),
            "ratio": ra["tgt_tokens_per_s"] / rb["tgt_tokens_per_s"] if ok else None,
            "ratio_updates_per_s": ra["updates_per_s"] / rb["updates_per_s"] if ok else None,
        }
        if not ok:
            entry["note"] = ra.get("error") or rb.get("error")
        ablations.append(entry)
    return ablations


def explain(args: Any, arms: list[Arm], device: torch.device) -> list[str]:
    """Notes printed under the tables: how each ablation was made."""
    notes = []
    if "bf16" in {a.precision for a in arms} and device.type == "cpu":
        if not {"avx512_bf16", "amx_bf16"} & set(machine_info(1, device)["cpu_bf16"]):
            notes.append("this CPU has no native bf16 (avx512_bf16/amx): bf16 is emulated")
    if "packing" in args.ablations:
        notes.append(
            "padded encoder: this script swaps Encoder.forward on its own model instance for "
            "an unpacked LSTM call on the padded batch (nmt has no such option; the final "
            "states are then wrong, so it is for timing only)"
        )
    if "batching" in args.ablations:
        notes.append(
            "random batching: a fresh permutation of the training set each epoch, cut by the "
            "same token budget (nmt.batching.cut_batches), no length sorting"
        )
    if "compile" in args.ablations:
        notes.append(
            f"torch.compile(criterion, dynamic=True); compilation happens in the {args.warmup} "
            f"warm-up updates, limited to --compile-timeout {args.compile_timeout:.0f} s"
        )
    elif args.quick:
        notes.append("torch.compile: not measured by --quick (compiling alone takes ~1 min)")
    notes.append(
        "model FLOPs count real tokens only (formula in nmt/flops.py); "
        "MFU divides them by the matmul peak in the run's dtype"
    )
    return notes


def write(report: dict[str, Any], out_md: str, out_json: str | None) -> None:
    """Print the markdown; write it to ``out_md`` (unless '-') and the JSON to ``out_json``."""
    md = markdown(report)
    print(md)
    if out_md != "-":
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(out_md).write_text(md, encoding="utf-8")
        log.info("wrote %s", out_md)
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", out_json)


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: what ran where, then the training, decoding and ablation
    tables and the notes."""
    lines = header(report) + training_table(report)
    dec = report.get("decode")
    if dec:
        lines += decoding_table(dec)
    if report["ablations"]:
        lines += ablations_table(report["ablations"])
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def header(report: dict[str, Any]) -> list[str]:
    """Title, command, machine, model and how each figure was measured."""
    m, cfg = report["machine"], report["config"]
    mc, tc = cfg["model"], cfg["trainer"]
    return [
        "# nmt benchmark",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs"
        + (f" (bf16: {', '.join(m['cpu_bf16'])})" if m["cpu_bf16"] else "")
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; device {m['device']}; torch {m['torch']}; {m['threads']} threads; "
        f"load average at start {fmt(m['load_avg_at_start'], 2)}.",
        "",
        f"Model: emb {mc['emb_size']}, encoder {mc['enc_layers']}x{mc['enc_hidden']}"
        f"{' bi' if mc['bidirectional'] else ''}-LSTM, decoder {mc['dec_layers']}x"
        f"{mc['dec_hidden']} LSTM, {mc['attention']} attention, input feeding "
        f"{'on' if mc['input_feeding'] else 'off'}, dropout {mc['dropout']}; "
        f"{cfg['optim']['name']} lr {cfg['optim']['lr']}; max_tokens {tc['max_tokens']} per side; "
        f"vocabulary {report['vocab']['src']}/{report['vocab']['tgt']} "
        f"({'joint' if report['vocab']['joint'] else 'separate'}); corpus {cfg['data']['dir']}.",
        "",
        f"Each training figure: median of {report['repeats']} repeats of {report['updates']} "
        f"updates after {report['warmup']} warm-up updates"
        + (
            f"; the arms were run {report['rounds']} times interleaved and each arm's median "
            "round is shown (peak RSS: the highest round)"
            if report.get("rounds", 1) > 1
            else ""
        )
        + ". Peak matmul ("
        + ", ".join(
            f"{k} {v['size']}x{v['size']}: {v['gflop_s']:,.0f} GFLOP/s"
            + (
                f" (before the runs {v['gflop_s_start']:,.0f}, after {v['gflop_s_end']:,.0f})"
                if "gflop_s_end" in v
                else ""
            )
            for k, v in report["peak"].items()
        )
        + ").",
        "",
    ]


def training_table(report: dict[str, Any]) -> list[str]:
    """One row per run (arm)."""
    m = report["machine"]
    lines = [
        "## Training",
        "",
        "| run | tgt tok/s | src+tgt tok/s | upd/s | tgt tok/upd | MFLOP/tgt tok | MFU | pad "
        "| peak RSS MB | warm-up s |" + (" CUDA max alloc MB |" if "gpu" in m else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if "gpu" in m else ""),
    ]
    for run in report["runs"]:
        name = ("**base**: " if run["base"] else "") + run["label"]
        r = run["result"]
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |" + " |" * 8)
            continue
        row = (
            f"| {name} | {fmt(r['tgt_tokens_per_s'])} | {fmt(r['src_tgt_tokens_per_s'])} "
            f"| {fmt(r['updates_per_s'], 2)} | {fmt(r['tgt_tokens_per_update'])} "
            f"| {fmt(r['flops_per_tgt_token'] / 1e6, 1)} | {100 * r['mfu']:.1f}% "
            f"| {100 * r['pad_fraction']:.1f}% | {fmt(r['peak_rss_mb'])} "
            f"| {fmt(r['warmup_s'], 1)} |"
        )
        if "gpu" in m:
            row += f" {fmt(r.get('cuda_max_allocated_mb'))} |"
        lines.append(row)
    return lines


def decoding_table(dec: dict[str, Any]) -> list[str]:
    """Greedy and beam 5 on the dev sentences."""
    lines = [
        "",
        "## Decoding",
        "",
        f"{dec['sentences']} dev sentences (mean {dec['mean_src_tokens']:.1f} source / "
        f"{dec['mean_ref_tokens']:.1f} reference subwords), {dec['precision']}, "
        f"decode.max_tokens {dec['max_tokens']}, max length {dec['max_len_a']} * src + "
        f"{dec['max_len_b']}; model: {dec['model']}.",
        "",
        "| search | sentences/s | output tok/s | mean output tokens | sentences/s per round |",
        "|---|---:|---:|---:|---|",
    ]
    for name in ("greedy", "beam5"):
        d = dec[name]
        per_round = ", ".join(fmt(x, 1) for x in d.get("rounds_sentences_per_s", []))
        lines.append(
            f"| {name} | {fmt(d['sentences_per_s'], 1)} | {fmt(d['tokens_per_s'])} "
            f"| {fmt(d['mean_output_tokens'], 1)} | {per_round} |"
        )
    if dec["greedy"]["mean_output_tokens"] > 1.5 * dec["mean_ref_tokens"]:
        lines += [
            "",
            "Outputs run towards the length limit (an untrained model rarely ends with eos), "
            "so these speeds understate a trained model's; pass --decode-checkpoint for "
            "realistic output lengths.",
        ]
    return lines


def ablations_table(ablations: list[dict[str, Any]]) -> list[str]:
    """Each ablation as the ratio A / B of target tokens/s."""
    lines = [
        "",
        "## Ablations (ratio of target tokens/s, A / B)",
        "",
        "| ablation | A | B | A tok/s | B tok/s | A / B | peak RSS A / B MB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for ab in ablations:
        lines.append(
            f"| {ab['name']} | {ab['a']} | {ab['b']} | {fmt(ab['a_tgt_tokens_per_s'])} "
            f"| {fmt(ab['b_tgt_tokens_per_s'])} | "
            + (f"{ab['ratio']:.2f}" if ab["ratio"] is not None else ab.get("note", "-"))
            + f" | {fmt(ab['a_peak_rss_mb'])} / {fmt(ab['b_peak_rss_mb'])} |"
        )
    return lines
