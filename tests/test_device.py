"""CPU-side checks of the CUDA path: RNG state of the device in use only, fp16 skipped steps,
the LSTM's precision under autocast, TF32 flags, ``rnn_impl`` resolution."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nmt.config import ModelConfig, OptimConfig
from nmt.data import collate
from nmt.device import fp16_step_skipped, set_tf32, tf32_flags
from nmt.distributed import DistContext
from nmt.loss import Criterion
from nmt.model import build_model
from nmt.optim import build_optimizer
from nmt.rng import rng_state, set_rng_state
from nmt.trainer import Step, train_update

PAD, BOS, EOS = 0, 2, 3
V = 17
TINY = ModelConfig(emb_size=6, enc_hidden=4, enc_layers=2, dec_hidden=8, dec_layers=2, dropout=0.2)


def _no_cuda(*args: object, **kwargs: object) -> Any:
    raise AssertionError("CUDA was touched")


@pytest.fixture
def cuda_host(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Pretend CUDA is available; record the generator calls (no real GPU is involved)."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", _no_cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", _no_cuda)

    def get(device: torch.device) -> Tensor:
        calls.append(("get", device))
        return torch.tensor([device.index or 0], dtype=torch.uint8)

    def put(state: Tensor, device: torch.device) -> None:
        calls.append(("set", (int(state[0]), device)))

    monkeypatch.setattr(torch.cuda, "get_rng_state", get)
    monkeypatch.setattr(torch.cuda, "set_rng_state", put)
    return calls


def test_cpu_run_on_a_cuda_host_never_touches_cuda(cuda_host: list[tuple[str, Any]]) -> None:
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert "cuda" not in state
    old = dict(state, cuda=[torch.tensor([k], dtype=torch.uint8) for k in range(8)])
    set_rng_state(old, cpu)  # a checkpoint from 8 GPUs resumed on the CPU
    assert cuda_host == []


def test_cuda_rng_state_of_the_device_in_use_only(
    cuda_host: list[tuple[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    dev1 = torch.device("cuda", 1)
    state = rng_state(dev1)
    assert cuda_host == [("get", dev1)] and int(state["cuda"][0]) == 1
    cuda_host.clear()
    set_rng_state(state, dev1)
    assert cuda_host == [("set", (1, dev1))]
    # resumed on another GPU index: the one state goes to the device in use
    cuda_host.clear()
    set_rng_state(state, torch.device("cuda", 0))
    assert cuda_host == [("set", (1, torch.device("cuda", 0)))]
    # the older format (every visible GPU's state): the entry of the device in use
    old = dict(state, cuda=[torch.tensor([10 + k], dtype=torch.uint8) for k in range(8)])
    cuda_host.clear()
    set_rng_state(old, torch.device("cuda", 3))
    assert cuda_host == [("set", (13, torch.device("cuda", 3)))]
    # 1 GPU saved, resumed as cuda:3 (CUDA_VISIBLE_DEVICES per rank differs): no IndexError
    one = dict(state, cuda=[torch.tensor([7], dtype=torch.uint8)])
    cuda_host.clear()
    with caplog.at_level(logging.WARNING, logger="nmt.device"):
        set_rng_state(one, torch.device("cuda", 3))
    assert cuda_host == [] and "none for cuda:3" in caplog.text


def test_fp16_step_skipped_is_a_scale_drop() -> None:
    assert fp16_step_skipped(65536.0, 32768.0)
    assert not fp16_step_skipped(65536.0, 65536.0)
    assert not fp16_step_skipped(65536.0, 131072.0)  # growth after a run of good steps


def _update_parts(seed: int = 0) -> tuple[Any, ...]:
    torch.manual_seed(seed)
    model = build_model(TINY, V, V, PAD)
    criterion = Criterion(model, 0.1)
    optimizer = build_optimizer(model.parameters(), OptimConfig())
    gen = torch.Generator().manual_seed(seed)
    examples = [
        (
            i,
            torch.randint(4, V, (n,), generator=gen).numpy(),
            torch.randint(4, V, (m,), generator=gen).numpy(),
        )
        for i, (n, m) in enumerate([(5, 4), (3, 6), (2, 2)])
    ]
    batch = collate(examples, PAD, BOS, EOS)
    return model, criterion, optimizer, batch


def test_skipped_fp16_step_is_not_an_update() -> None:
    """A real GradScaler (on the CPU) meeting a NaN gradient skips the step and lowers its
    scale; train_update must report that update as not finite (before: always finite)."""
    model, criterion, optimizer, batch = _update_parts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = DistContext()
    cpu = torch.device("cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = Step(criterion, model, optimizer, scaler, ctx, cpu, "fp32", 1.0)
    poison = model.output.bias.register_hook(lambda g: g * float("nan"))
    stats = train_update([batch], step)
    assert not stats.finite and scaler.get_scale() == 512.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    poison.remove()
    stats = train_update([batch], step)
    assert stats.finite and scaler.get_scale() == 512.0
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _spy(lstm: nn.LSTM, seen: list[tuple[bool, torch.dtype, torch.dtype | None]]) -> None:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        data = x.data if hasattr(x, "batch_sizes") else x
        hx = args[1] if len(args) > 1 and args[1] is not None else None
        seen.append((torch.is_autocast_enabled("cpu"), data.dtype, hx[0].dtype if hx else None))

    lstm.register_forward_pre_hook(hook)


@pytest.mark.parametrize("input_feeding", [False, True])
def test_torch_lstm_runs_in_float32_under_bf16_autocast(input_feeding: bool) -> None:
    """rnn_impl=torch under bf16 autocast: every nn.LSTM call sees float32 inputs and states
    with autocast off (PyTorch's cuDNN autocast would run it in fp16), and the encoder's
    result is exactly the fp32 one."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, rnn_impl="torch", input_feeding=input_feeding)
    model = build_model(cfg, V, V, PAD).eval()
    seen: list[tuple[bool, torch.dtype, torch.dtype | None]] = []
    _spy(model.encoder.rnn, seen)
    _spy(model.decoder.rnn, seen)
    model_parts = _update_parts()
    batch = model_parts[3]
    with torch.no_grad():
        ref = model.encoder(batch.src, batch.src_lengths)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc = model.encoder(batch.src, batch.src_lengths)
            out = model(batch.src, batch.src_lengths, batch.tgt_in)
            memory, state = model.encode(batch.src, batch.src_lengths)
            log_probs, _, _ = model.step(batch.tgt_in[:, 0], state, memory)
    assert len(seen) >= 4
    for autocast_on, x_dtype, h_dtype in seen:
        assert not autocast_on and x_dtype == torch.float32 and h_dtype in (None, torch.float32)
    assert torch.equal(enc.outputs, ref.outputs) and torch.equal(enc.h, ref.h)
    assert torch.isfinite(out.float()).all() and log_probs.dtype == torch.float32


def test_tf32_flags_are_set_both_ways() -> None:
    saved = tf32_flags()
    try:
        assert set_tf32(True) == {"matmul": True, "cudnn": True}
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert set_tf32(False) == {"matmul": False, "cudnn": False}
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]


def test_criterion_on_cpu_indexed_rows_equals_the_boolean_mask() -> None:
    """The real target rows picked by a CPU index (no GPU sync) give bit for bit the loss and
    gradients of boolean-mask indexing."""
    from nmt.device import real_rows
    from nmt.loss import smoothed_loss_and_nll

    model, criterion, _, batch = _update_parts()
    model.eval()  # no dropout: both passes compute the same thing
    rows = real_rows(batch.tgt_out, PAD, torch.device("cpu"))
    loss, nll = criterion(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, rows)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    states = model(batch.src, batch.src_lengths, batch.tgt_in)
    mask = batch.tgt_out != PAD
    want_loss, want_nll = smoothed_loss_and_nll(
        model.logits(states[mask]), batch.tgt_out[mask], 0.1
    )
    want_loss.backward()
    assert torch.equal(loss, want_loss) and torch.equal(nll, want_nll)
    assert all(torch.equal(g, p.grad) for g, p in zip(got, model.parameters(), strict=True))
