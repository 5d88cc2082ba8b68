"""int8 decoding on the CPU: the quantized model translates the test file, through the command
and the API alike, and stays close to the float model it came from. (The BLEU comparison on
lo.de-en is a benchmark: scripts/int8_benchmark.py, docs/benchmarks.md.)"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt import Translator
from nmt.checkpoint import load_model
from nmt.config import ConfigError, TranslateConfig
from nmt.fused_step import FusedStepLSTM
from nmt.quantize import quantize_model
from nmt.translation import _make_src

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _quantized(model: torch.nn.Module) -> bool:
    """Whether any submodule is a dynamically quantized one."""
    return any(
        type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in model.modules()
    )


@pytest.fixture(scope="module")
def model() -> tuple[Path, Path]:
    return tiny_checkpoint()


def test_quantized_model_translates_the_test_file(model: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, corpus = model
    src = corpus / "test.es"
    lines = src.read_text(encoding="utf-8").splitlines()
    out = tmp_path / "out"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = next(x for x in readme.splitlines() if "nmt.translate" in x and "quantize=int8" in x)
    command = shlex.split(line.replace(".venv/bin/python", sys.executable, 1))  # as written,
    swap = {"ckpt=runs/default/best.pt": f"ckpt={ckpt}", "input=my.de": f"input={src}"}
    swap["output=my.en"] = f"output={out}"  # on the test model and file
    res = subprocess.run(
        [swap.get(arg, arg) for arg in command] + ["decode.beam_size=3"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    got = out.read_text(encoding="utf-8").splitlines()
    assert len(got) == len(lines)
    translator = Translator.load(ckpt, quantize="int8", beam_size=3)
    assert _quantized(translator.model)
    assert translator.translate(lines) == got
    fp32 = Translator.load(ckpt, device="cpu", beam_size=3).translate(lines)
    same = sum(a == b for a, b in zip(got, fp32, strict=True))
    assert same >= len(lines) // 2, (same, len(lines))  # int8 mostly agrees with float


@torch.inference_mode()
def test_int8_step_is_close_to_fp32(model: tuple[Path, Path]) -> None:
    fp32, tok, _ = load_model(model[0], "cpu")
    int8 = quantize_model(fp32, "int8")
    assert not _quantized(fp32)  # the float model is left as it was
    dynamic = torch.ao.nn.quantized.dynamic
    assert isinstance(int8.output, dynamic.Linear)  # type: ignore[attr-defined]
    assert isinstance(int8.encoder.rnn, dynamic.LSTM)  # type: ignore[attr-defined]
    assert isinstance(int8.decoder.rnn, FusedStepLSTM)  # one int8 matmul per layer and step
    assert all(isinstance(m, dynamic.Linear) for m in int8.decoder.rnn.layers)  # type: ignore[attr-defined]
    assert isinstance(fp32.decoder.rnn, torch.nn.LSTM)
    lines = (model[1] / "test.es").read_text(encoding="utf-8").splitlines()[:8]
    ids = sorted(tok.encode_src(lines), key=len, reverse=True)
    src, lengths = _make_src(ids, tok.pad_id, tok.eos_id, "cpu")
    prev = torch.full((len(ids),), tok.bos_id)
    a = fp32.step(prev, *reversed(fp32.encode(src, lengths)))[0]  # (B, V) log-probs
    b = int8.step(prev, *reversed(int8.encode(src, lengths)))[0]
    assert (a.exp() - b.exp()).abs().sum(dim=1).max() < 0.05  # total variation distance
    assert not torch.equal(a, b)  # it did run in int8


def test_quantize_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="quantize=int4: unknown value"):
        TranslateConfig(ckpt="x", quantize="int4")


def test_quantizing_a_model_fused_for_decoding(model: tuple[Path, Path]) -> None:
    """``load_for_decoding`` fuses the decoder on the CPU; quantizing that model gives the
    same int8 layers as quantizing the float one, and ``lstms=False`` keeps the LSTMs float."""
    from nmt.translation import load_for_decoding

    fused, _ = load_for_decoding(str(model[0]), "cpu")
    assert isinstance(fused.decoder.rnn, FusedStepLSTM)
    assert not _quantized(fused)
    dynamic = torch.ao.nn.quantized.dynamic
    int8 = quantize_model(fused, "int8")
    assert all(isinstance(m, dynamic.Linear) for m in int8.decoder.rnn.layers)  # type: ignore[attr-defined]
    linear_only = quantize_model(fused, "int8", lstms=False)
    assert all(type(m) is torch.nn.Linear for m in linear_only.decoder.rnn.layers)  # type: ignore[attr-defined]
    assert isinstance(linear_only.output, dynamic.Linear)  # type: ignore[attr-defined]
    assert type(linear_only.encoder.rnn) is torch.nn.LSTM
