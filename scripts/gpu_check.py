"""The CUDA path in one run: what nmt promises on a GPU, measured and written to a report.

Called by ``scripts/gpu_check.sh`` (which sets up dependencies); usable alone:

    python scripts/gpu_check.py --out gpu_report            # on a machine with CUDA
    python scripts/gpu_check.py --out /tmp/gc --dry-run     # anywhere: CPU smoke, tiny sizes

Sections (each timed; one that fails is reported with its traceback and the rest go on):

- ``env``: torch/CUDA/cuDNN versions, the GPU, TF32 defaults.
- ``pytest``: ``pytest -m gpu`` (tests/test_cuda.py and the CUDA search test).
- ``reference``: CUDA float32 against a CPU float64 reference (torch LSTM) for the loss, the
  decoder outputs and every gradient; fast path, input feeding, Bahdanau; both LSTM
  implementations; TF32 off and on. Largest relative errors.
- ``training``: fp32, bf16 and fp16 training of ``--updates`` updates on the demo corpus
  (``nmt.trainer.train``): first/last logged loss, skipped updates, target tokens/s.
- ``resume``: 2N updates against N + resume + N, for ``rnn_impl`` nmt and torch, with
  deterministic algorithms: equal or the largest parameter difference.
- ``translations``: the fp32 model of ``training`` translating dev sentences on the CPU and on
  CUDA (greedy and beam 5): identical outputs, largest score difference.
- ``nccl``: a 1-process NCCL group (plus nmt's gloo control group): DDP updates against plain
  ones.
- ``syncs``: host-device syncs counted by ``torch.cuda.set_sync_debug_mode`` per update and
  per decoding step.
- ``benchmark``: ``scripts/benchmark.py`` on CUDA (tokens/s, MFU against measured bf16/fp32
  matmul peaks, max memory) with the precision and rnn_impl ablations.

With ``--dry-run`` (no GPU needed) every section runs on the CPU at tiny sizes, or says why it
cannot, which proves the script's Python parts; the figures mean nothing then.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

from nmt.compose import compose_train as compose  # noqa: E402
from nmt.config import ModelConfig, OptimConfig  # noqa: E402
from nmt.data import collate  # noqa: E402
from nmt.device import set_tf32, tf32_flags  # noqa: E402
from nmt.distributed import DistContext, no_buffer_sync  # noqa: E402
from nmt.loss import Criterion  # noqa: E402
from nmt.model import Seq2Seq, build_model  # noqa: E402
from nmt.optim import build_optimizer  # noqa: E402
from nmt.trainer import Step, train_update  # noqa: E402

log = logging.getLogger("gpu_check")

PAD, BOS, EOS = 0, 2, 3
V = 23
SMALL = ModelConfig(
    emb_size=16, enc_hidden=12, enc_layers=2, dec_hidden=20, dec_layers=2, dropout=0.2
)
VARIANTS: dict[str, dict[str, Any]] = {
    "fast path": {},
    "input feeding": {"input_feeding": True},
    "bahdanau": {"attention": "bahdanau"},
}
SECTIONS = (
    "env",
    "pytest",
    "reference",
    "training",
    "resume",
    "translations",
    "nccl",
    "syncs",
    "benchmark",
)


@dataclasses.dataclass
class Check:
    out: Path
    device: torch.device
    dry_run: bool
    updates: int
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)  # between sections

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ------------------------------------------------------------------------------------ helpers


def corpus_overrides(chk: Check) -> list[str]:
    """The demo corpus (the whole of it on CUDA, 400 pairs with --dry-run)."""
    overrides = [
        "data=demo_es_en",
        f"data.cache_dir={chk.out / 'cache'}",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "trainer.log_every=10",
        "trainer.valid_every=100000",
        "trainer.valid_max_sentences=100",
        "trainer.save_every=100000",
        "eval_test=false",
        f"device={chk.device}",
    ]
    if chk.dry_run:
        corpus = chk.out / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for split, n in {"train": 400, "dev": 20, "test": 20}.items():
            for lang in ("es", "en"):
                lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
                (corpus / f"{split}.{lang}").write_text(
                    "\n".join(lines.splitlines()[:n]) + "\n", encoding="utf-8"
                )
        overrides += [
            f"data.dir={corpus}",
            "model=tiny",
            "tokenizer.vocab_size=300",
            "trainer.max_tokens=400",
            "trainer.log_every=2",
        ]
    return overrides


def make_batch(seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    sizes = [(7, 5), (3, 9), (5, 1), (1, 4), (6, 6)]
    examples = [
        (
            i,
            torch.randint(4, V, (n,), generator=gen).numpy(),
            torch.randint(4, V, (m,), generator=gen).numpy(),
        )
        for i, (n, m) in enumerate(sizes)
    ]
    return collate(examples, PAD, BOS, EOS)


def loss_and_grads(model: Seq2Seq, batch: Any, device: torch.device) -> tuple[Any, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    b = batch.to(device)
    loss, _ = Criterion(model, 0.1)(b.src, b.src_lengths, b.tgt_in, b.tgt_out)
    loss.backward()
    grads = {k: p.grad.detach().double().cpu() for k, p in model.named_parameters()}
    return loss.detach().double().cpu(), grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    saved = tf32_flags()
    set_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]


class LossLog(logging.Handler):
    """Collects the training loss that ``nmt.trainer.log_train`` logs."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("update %d epoch") and record.args:
            self.losses.append(float(record.args[2]))  # type: ignore[index]


def train_run(overrides: list[str], out_dir: Path) -> dict[str, Any]:
    from nmt.checkpoint import load_checkpoint
    from nmt.trainer import train

    handler = LossLog()
    logging.getLogger("nmt.trainer").addHandler(handler)
    try:
        res = train(compose(overrides), out_dir)
    finally:
        logging.getLogger("nmt.trainer").removeHandler(handler)
    state = load_checkpoint(out_dir / "last.pt")["trainer"]["state"]
    seconds = max(state["elapsed_s"], 1e-9)
    return {
        "updates": res["updates"],
        "skipped_updates": res["skipped_updates"],
        "loss_first": handler.losses[0] if handler.losses else None,
        "loss_last": handler.losses[-1] if handler.losses else None,
        "tgt_tokens_per_s": round(state["tokens"] / seconds, 1),
        "seconds": round(seconds, 1),
    }


# ----------------------------------------------------------------------------------- sections


def section_env(chk: Check) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "tf32_defaults": tf32_flags(),
        "device": str(chk.device),
    }
    if chk.cuda:
        props = torch.cuda.get_device_properties(chk.device)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            nccl=str(torch.cuda.nccl.version()),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


def section_pytest(chk: Check) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    (chk.out / "pytest_gpu.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {
        "ok": proc.returncode == 0,
        "returncode": proc.returncode,
        "summary": tail,
        "log": "pytest_gpu.txt",
    }


def section_reference(chk: Check) -> dict[str, Any]:
    """Relative errors against CPU float64; TF32 on is only measured on CUDA."""
    rows = []
    for tf in (False, True) if chk.cuda else (False,):
        for name, variant in VARIANTS.items():
            for impl in ("torch", "nmt"):
                with tf32(tf):
                    torch.manual_seed(0)
                    cfg = dataclasses.replace(SMALL, rnn_impl="torch", **variant)
                    model = build_model(cfg, V, V, PAD).eval()
                    batch = make_batch()
                    ref = copy.deepcopy(model).double()
                    got = copy.deepcopy(model)
                    got.encoder.rnn_impl = got.decoder.rnn_impl = impl
                    got = got.to(chk.device)
                    ref_loss, ref_grads = loss_and_grads(ref, batch, torch.device("cpu"))
                    got_loss, got_grads = loss_and_grads(got, batch, chk.device)
                    real = batch.tgt_out != PAD  # padded positions differ by design
                    with torch.no_grad():
                        ref_out = ref(batch.src, batch.src_lengths, batch.tgt_in)[real]
                        b = batch.to(chk.device)
                        got_out = got(b.src, b.src_lengths, b.tgt_in).double().cpu()[real]
                rows.append(
                    {
                        "tf32": tf,
                        "variant": name,
                        "rnn_impl": impl,
                        "loss": rel_err(got_loss, ref_loss),
                        "outputs": rel_err(got_out, ref_out.double()),
                        "grads": max(rel_err(got_grads[k], ref_grads[k]) for k in ref_grads),
                    }
                )
    worst_fp32 = max(max(r["loss"], r["outputs"], r["grads"]) for r in rows if not r["tf32"])
    return {"rows": rows, "worst_without_tf32": worst_fp32, "ok": worst_fp32 < 1e-3}


def section_training(chk: Check) -> dict[str, Any]:
    precisions = ["fp32", "bf16", "fp16"] if chk.cuda else ["fp32", "bf16"]
    runs = {}
    for precision in precisions:
        out_dir = chk.out / f"train_{precision}"
        runs[precision] = train_run(
            corpus_overrides(chk)
            + [f"trainer.precision={precision}", f"trainer.max_updates={chk.updates}"],
            out_dir,
        )
        if precision == "fp32":
            chk.shared["fp32_checkpoint"] = out_dir / "last.pt"
    return runs


def section_resume(chk: Check) -> dict[str, Any]:
    from nmt.checkpoint import load_checkpoint

    n = 3 if chk.dry_run else 25
    out: dict[str, Any] = {"updates": f"{2 * n} vs {n} + resume + {n}"}
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        for impl in ("nmt", "torch"):
            base = corpus_overrides(chk) + [
                f"model.rnn_impl={impl}",
                "model.dropout=0.3",
                "trainer.accum_steps=2",
            ]
            d = chk.out / f"resume_{impl}"
            train_run(base + [f"trainer.max_updates={2 * n}"], d / "whole")
            train_run(base + [f"trainer.max_updates={n}"], d / "split")
            resumed = base + [f"trainer.max_updates={2 * n}", f"resume={d / 'split/last.pt'}"]
            train_run(resumed, d / "resumed")
            a = load_checkpoint(d / "whole/last.pt")["model"]
            b = load_checkpoint(d / "resumed/last.pt")["model"]
            diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
            out[impl] = {"exact": diff == 0.0, "max_abs_param_diff": diff}
    finally:
        torch.use_deterministic_algorithms(False)
    # promised exact: rnn_impl=nmt (its dropout draws from the saved generators); the cuDNN
    # LSTM's inter-layer dropout keeps a random state of its own that no checkpoint holds
    out["ok"] = out["nmt"]["exact"]
    return out


def section_translations(chk: Check) -> dict[str, Any]:
    from nmt.config import DecodeConfig
    from nmt.translation import load_for_decoding, translate_lines

    ckpt = chk.shared.get("fp32_checkpoint")
    if ckpt is None:
        return {"skipped": "needs the fp32 run of the training section"}
    if not chk.cuda:
        return {"skipped": "no CUDA: nothing to compare the CPU translations with"}
    lines = (ROOT / "data/demo.es-en/dev.es").read_text(encoding="utf-8").splitlines()[:100]
    out: dict[str, Any] = {"sentences": len(lines)}
    for name, beam in (("greedy", 1), ("beam5", 5)):
        decode = DecodeConfig(beam_size=beam)
        hyps = {}
        for dev in ("cpu", str(chk.device)):  # as nmt.translate loads: fused on the CPU
            model, tok = load_for_decoding(str(ckpt), dev)
            hyps[dev] = translate_lines(model, tok, lines, decode, dev)
        cpu, gpu = hyps["cpu"], hyps[str(chk.device)]
        same = sum(a[0].tokens == b[0].tokens for a, b in zip(cpu, gpu, strict=True))
        score_diff = max(abs(a[0].score - b[0].score) for a, b in zip(cpu, gpu, strict=True))
        out[name] = {"identical": same, "max_score_diff": score_diff}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def section_nccl(chk: Check) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if chk.cuda else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        cpu_group = dist.new_group(backend="gloo")
        t = torch.ones(1)
        dist.all_reduce(t, group=cpu_group)
        params = {}
        for wrapped in (False, True):
            torch.manual_seed(0)
            model = build_model(dataclasses.replace(SMALL, dropout=0.0), V, V, PAD).to(chk.device)
            criterion: torch.nn.Module = Criterion(model, 0.1)
            if wrapped:
                criterion = DistributedDataParallel(criterion, device_ids=None, **no_buffer_sync())
            optimizer = build_optimizer(model.parameters(), OptimConfig())
            ctx = DistContext(device=chk.device, cpu_group=cpu_group)
            step = Step(criterion, model, optimizer, None, ctx, chk.device, "fp32", 1.0)
            for seed in range(5):
                stats = train_update([make_batch(seed)], step)
                assert stats.finite
            params[wrapped] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        diff = max(float((params[True][k] - params[False][k]).abs().max()) for k in params[True])
        return {
            "ok": diff < 1e-6,
            "backend": backend,
            "ddp_vs_plain_max_abs_diff": diff,
            "gloo_control_group": True,
        }
    finally:
        dist.destroy_process_group()


def count_syncs(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def sync_counts(chk: Check, impl: str, steps: int) -> dict[str, int]:
    """Syncs in one fp32 update and in greedy / beam-4 decoding of ``steps`` steps."""
    from nmt.search import beam_search, greedy_search

    batch = make_batch()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMALL, rnn_impl=impl), V, V, PAD).to(chk.device)
    criterion = Criterion(model, 0.1)
    optimizer = build_optimizer(model.parameters(), OptimConfig())
    ctx = DistContext(device=chk.device)
    step = Step(criterion, model, optimizer, None, ctx, chk.device, "fp32", 1.0)

    def update() -> None:
        train_update([batch], step)

    update()  # warm-up (optimizer state, allocator)
    per_update = count_syncs(update)
    model.eval()
    src, lengths = batch.src.to(chk.device), batch.src_lengths
    with torch.inference_mode():
        greedy = count_syncs(lambda: greedy_search(model, src, lengths, BOS, EOS, 0.0, steps))
        beam = count_syncs(
            lambda: beam_search(
                model, src, lengths, BOS, EOS, beam_size=4, max_len_a=0.0, max_len_b=steps
            )
        )
    return {"per_update": per_update, f"greedy_{steps}_steps": greedy, f"beam4_{steps}_steps": beam}


def section_syncs(chk: Check) -> dict[str, Any]:
    if not chk.cuda:
        return {"skipped": "no CUDA: torch.cuda.set_sync_debug_mode needs a GPU"}
    return {impl: sync_counts(chk, impl, 20) for impl in ("torch", "nmt")}


def section_benchmark(chk: Check) -> dict[str, Any]:
    if chk.dry_run:
        return {"skipped": "--dry-run: the benchmark's CPU smoke is tests/test_benchmark.py"}
    cmd = [
        sys.executable,
        "scripts/benchmark.py",
        "--device",
        str(chk.device),
        "--updates",
        "20",
        "--warmup",
        "3",
        "--repeats",
        "2",
        "--decode-sentences",
        "200",
        "--ablations",
        "precision",
        "rnn_impl",
        "--out-json",
        str(chk.out / "benchmark.json"),
        "--out-md",
        str(chk.out / "benchmark.md"),
        f"data.cache_dir={chk.out / 'cache'}",
        "trainer.tensorboard=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    (chk.out / "benchmark.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        return {"returncode": proc.returncode, "log": "benchmark.log"}
    report = json.loads((chk.out / "benchmark.json").read_text())
    runs = [
        {
            "label": r["label"],
            "tgt_tokens_per_s": r["result"].get("tgt_tokens_per_s"),
            "mfu": r["result"].get("mfu"),
            "cuda_max_allocated_mb": r["result"].get("cuda_max_allocated_mb"),
            "error": r["result"].get("error"),
        }
        for r in report["runs"]
    ]
    peaks = {k: v.get("gflop_s") for k, v in report["peak"].items()}
    return {
        "peak_gflop_s": peaks,
        "runs": runs,
        "decode": report.get("decode"),
        "md": "benchmark.md",
    }


# ------------------------------------------------------------------------------------- report


def markdown(results: dict[str, Any], header: dict[str, Any]) -> str:
    lines = [f"# nmt GPU check ({header['when']})", ""]
    lines += [f"- command: `{header['command']}`", f"- total: {header['seconds']:.0f} s", ""]
    for name, res in results.items():
        status = "FAILED" if "error" in res else "ok"
        lines += [f"## {name} ({status}, {res.get('seconds', 0):.0f} s)", ""]
        if "error" in res:
            lines += ["```", str(res["error"]).rstrip(), "```", ""]
        if "result" in res:
            lines += ["```json", json.dumps(res["result"], indent=2, default=str), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="report directory (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU smoke at tiny sizes, no GPU needed")
    p.add_argument("--device", default="cuda", help="CUDA device to check (default cuda)")
    p.add_argument("--updates", type=int, help="training updates per precision (300; dry: 4)")
    p.add_argument("--only", nargs="*", choices=SECTIONS, help="run these sections only")
    p.add_argument("--budget-s", type=float, default=570, help="skip sections after this")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # nmt's INFO lines feed LossLog, not the screen
        handler.addFilter(lambda r: r.name == "gpu_check" or r.levelno >= logging.WARNING)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        msg = (
            f"gpu_check: no CUDA device visible to torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda}); nothing checked. "
            "Use --dry-run for the CPU smoke."
        )
        (out / "report.md").write_text(msg + "\n", encoding="utf-8")
        print(msg, file=sys.stderr)
        return 3
    else:
        device = torch.device(args.device)
    chk = Check(out=out, device=device, dry_run=args.dry_run, updates=args.updates or 4)
    if not args.dry_run and args.updates is None:
        chk.updates = 300
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.only or SECTIONS:
        if time.perf_counter() - start > args.budget_s:
            results[name] = {"error": f"skipped: over the {args.budget_s:.0f} s budget"}
            continue
        log.info("section %s", name)
        t0 = time.perf_counter()
        try:
            result = globals()[f"section_{name}"](chk)
            results[name] = {"result": result}
            if isinstance(result, dict) and result.get("ok") is False:
                results[name]["error"] = "check failed (see result)"
        except Exception:
            results[name] = {"error": traceback.format_exc(limit=8)}
            log.error("section %s failed:\n%s", name, results[name]["error"])
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        # written after every section: a run stopped by the time limit leaves its report
        header = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(["python", "scripts/gpu_check.py", *(argv or sys.argv[1:])]),
            "seconds": time.perf_counter() - start,
        }
        (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "report.md").write_text(markdown(results, header), encoding="utf-8")
    failed = [n for n, r in results.items() if "error" in r]
    print(f"gpu_check: report in {out}/report.md; failed sections: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
