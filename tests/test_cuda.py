"""The CUDA path against the CPU: float64 references, both LSTM implementations, TF32, exact
resume, syncs. Every test here is marked ``gpu`` and skipped without a CUDA device.

TF32: each test sets ``nmt.device.set_tf32`` itself (off unless it says otherwise) and
restores the flags afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from nmt.config import ModelConfig, OptimConfig
from nmt.data import collate
from nmt.device import set_tf32, tf32_flags
from nmt.distributed import DistContext
from nmt.loss import Criterion
from nmt.model import Seq2Seq, build_model
from nmt.optim import build_optimizer
from nmt.search import beam_search, greedy_search
from nmt.trainer import Step, train_update

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (resume)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PAD, BOS, EOS = 0, 2, 3
V = 23
SMALL = ModelConfig(
    emb_size=16, enc_hidden=12, enc_layers=2, dec_hidden=20, dec_layers=2, dropout=0.2
)
VARIANTS = {
    "fast path": {},
    "input feeding": {"input_feeding": True},
    "bahdanau": {"attention": "bahdanau"},
}


@pytest.fixture(autouse=True)
def tf32_off() -> Iterator[None]:
    saved = tf32_flags()
    set_tf32(False)
    yield
    set_tf32(saved["matmul"])


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


def loss_and_grads(model: Seq2Seq, batch: Any, device: str) -> tuple[Any, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    b = batch.to(device)
    loss, _ = Criterion(model, 0.1)(b.src, b.src_lengths, b.tgt_in, b.tgt_out)
    loss.backward()
    grads = {k: p.grad.detach().double().cpu() for k, p in model.named_parameters()}
    return loss.detach().double().cpu(), grads


def reference_errors(variant: dict[str, Any], rnn_impl: str) -> dict[str, float]:
    """Largest relative errors of CUDA float32 against CPU float64 (torch LSTM) for the
    loss, every gradient and the decoder outputs."""
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMALL, rnn_impl="torch", **variant), V, V, PAD)
    model.eval()  # dropout off: the two runs compute the same function
    batch = make_batch()
    ref = copy.deepcopy(model).double()
    cuda = copy.deepcopy(model)
    cuda.encoder.rnn_impl = cuda.decoder.rnn_impl = rnn_impl
    cuda = cuda.cuda()
    ref_loss, ref_grads = loss_and_grads(ref, batch, "cpu")
    got_loss, got_grads = loss_and_grads(cuda, batch, "cuda")
    real = batch.tgt_out != PAD  # after a row's end the two LSTMs differ by design
    with torch.no_grad():
        ref_out = ref(batch.src, batch.src_lengths, batch.tgt_in).double()[real]
        b = batch.to("cuda")
        got_out = cuda(b.src, b.src_lengths, b.tgt_in).double().cpu()[real]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))

    return {
        "loss": rel(got_loss, ref_loss),
        "outputs": rel(got_out, ref_out),
        "grads": max(rel(got_grads[k], ref_grads[k]) for k in ref_grads),
    }


@pytest.mark.parametrize("rnn_impl", ["torch", "nmt"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_matches_float64_cpu_reference(variant: str, rnn_impl: str) -> None:
    """TF32 off: float32 on CUDA is within float32 rounding of the float64 CPU result
    (relative to each tensor's largest entry; float32 on the CPU reaches about 1e-4)."""
    errors = reference_errors(VARIANTS[variant], rnn_impl)
    assert max(errors.values()) < 1e-3, errors


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_with_tf32_is_close_to_the_reference(variant: str) -> None:
    """TF32 on (cuDNN LSTM and matmuls): a 10-bit mantissa, so about 1e-3 relative per
    product; a bound well above that, far below what a wrong kernel gives."""
    set_tf32(True)
    errors = reference_errors(VARIANTS[variant], "torch")
    assert max(errors.values()) < 5e-2, errors


def update_parts(rnn_impl: str, seed: int = 0) -> tuple[Any, ...]:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(SMALL, rnn_impl=rnn_impl)
    model = build_model(cfg, V, V, PAD).cuda()
    optimizer = build_optimizer(model.parameters(), OptimConfig())
    return model, Criterion(model, 0.1), optimizer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_updates_are_finite(precision: str) -> None:
    model, criterion, optimizer = update_parts("torch")
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ctx, dev = DistContext(device=torch.device("cuda")), torch.device("cuda")
    step = Step(criterion, model, optimizer, scaler, ctx, dev, precision, 1.0)
    losses = []
    for _ in range(20):
        stats = train_update([make_batch()], step)
        if stats.finite:
            losses.append(stats.loss)
    assert len(losses) >= 15 and losses[-1] < losses[0]


def count_syncs(fn: Any) -> int:
    """Host-device syncs that ``torch.cuda.set_sync_debug_mode`` reports while ``fn`` runs."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_few_syncs_per_update_and_per_decoding_step() -> None:
    model, criterion, optimizer = update_parts("torch")
    ctx, dev = DistContext(device=torch.device("cuda")), torch.device("cuda")
    batch = make_batch()
    step = Step(criterion, model, optimizer, None, ctx, dev, "fp32", 1.0)

    def update() -> None:
        train_update([batch], step)

    update()  # warm-up
    # the one read of the update, plus what PyTorch's packing utilities do (sorted and
    # unsorted indices)
    assert count_syncs(update) <= 4
    model.eval()
    src, lengths = batch.src.cuda(), batch.src_lengths
    with torch.inference_mode():
        steps = 12
        greedy = count_syncs(lambda: greedy_search(model, src, lengths, BOS, EOS, 0.0, steps))
        beam = count_syncs(
            lambda: beam_search(
                model, src, lengths, BOS, EOS, beam_size=3, max_len_a=0.0, max_len_b=steps
            )
        )
    # about one per step (whether to drop finished rows), plus encoding and the final read
    assert greedy <= steps + 8 and beam <= steps + 8, (greedy, beam)


def test_rnn_impls_agree_on_cuda() -> None:
    """The same parameters through cuDNN and through nmt.lstm, in training mode without
    dropout: outputs and gradients agree to float32 rounding."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, dropout=0.0, input_feeding=True)
    a = build_model(dataclasses.replace(cfg, rnn_impl="torch"), V, V, PAD).cuda()
    b = copy.deepcopy(a)
    b.encoder.rnn_impl = b.decoder.rnn_impl = "nmt"
    batch = make_batch()
    la, ga = loss_and_grads(a, batch, "cuda")
    lb, gb = loss_and_grads(b, batch, "cuda")
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6)


ROOT = Path(__file__).resolve().parents[1]


def test_resume_is_exact_on_cuda_with_the_nmt_lstm(tmp_path: Path) -> None:
    """rnn_impl=nmt draws its dropout from the CUDA generator, which the checkpoint saves;
    with deterministic algorithms an interrupted run equals an uninterrupted one."""
    from test_trainer import compose_train, tiny_overrides

    from nmt.checkpoint import load_checkpoint
    from nmt.trainer import train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in {"train": 400, "dev": 20, "test": 20}.items():
        for lang in ("es", "en"):
            lines = (ROOT / "data/demo.es-en" / f"{split}.{lang}").read_text(encoding="utf-8")
            (corpus / f"{split}.{lang}").write_text("\n".join(lines.splitlines()[:n]) + "\n")
    base = tiny_overrides(corpus, tmp_path / "cache") + [
        "device=cuda",
        "model.rnn_impl=nmt",
        "model.dropout=0.3",
        "trainer.valid_every=1000",
        "trainer.save_every=1000",
        "trainer.max_tokens=300",
        "eval_test=false",
        "trainer.tensorboard=false",  # the GPU machine may lack the tensorboard package
    ]
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        train(compose_train(base + ["trainer.max_updates=8"]), tmp_path / "whole")
        train(compose_train(base + ["trainer.max_updates=4"]), tmp_path / "split")
        rest = compose_train(
            base + ["trainer.max_updates=8", f"resume={tmp_path / 'split/last.pt'}"]
        )
        train(rest, tmp_path / "split2")
    finally:
        torch.use_deterministic_algorithms(False)
    a = load_checkpoint(tmp_path / "whole/last.pt")["model"]
    b = load_checkpoint(tmp_path / "split2/last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rng = load_checkpoint(tmp_path / "whole/last.pt")["trainer"]["rng"]
    assert isinstance(rng["cuda"], torch.Tensor)  # the device in use only
