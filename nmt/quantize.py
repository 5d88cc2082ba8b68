"""int8 inference on the CPU: dynamic quantization of a loaded model's linear layers and LSTMs.

``quantize_model(model, "int8")`` returns the model with every ``nn.Linear`` (attention key and
query projections, the bridge, the decoder's combine layer, the output projection over the
vocabulary) and every ``nn.LSTM`` replaced by PyTorch's dynamically quantized modules
(``torch.ao.nn.quantized.dynamic``): weights stored as int8 (linear layers: one scale per
output row; LSTMs: one per matrix, all torch's quantized LSTM offers),
activations quantized on the fly per call, int32 accumulation (fbgemm, using AVX-512 VNNI where
the CPU has it). Embeddings stay float32 (a table look-up has no matmul to speed up).

nmt's own CPU LSTM (``nmt.lstm``, ``model.rnn_impl=auto`` on the CPU) reads the float weights
of the ``nn.LSTM`` directly, so it cannot run a quantized LSTM: a model whose LSTMs are
quantized runs them through ``torch``'s quantized LSTM (``rnn_impl`` is switched to ``torch``
on the encoder and decoder). ``LSTMS`` says whether the LSTMs are quantized too; the
measurements behind the choice are in docs/benchmarks.md ("int8 on the CPU").

Quantization is applied after loading, at decode time (``quantize=int8`` on ``nmt-translate``,
``nmt-serve`` and ``nmt-evaluate``, ``Translator.load(..., quantize="int8")``): the checkpoint
stays the float one, so there is no second file to keep in step with it, and loading stays
``weights_only`` (a quantized state dict holds packed-weight objects the safe loader refuses).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

QUANTIZE_MODES = ("none", "int8")
LSTMS = True  # quantize the LSTMs as well as the linear layers (see the module docstring)


def quantize_model(model: nn.Module, mode: str, lstms: bool = LSTMS) -> nn.Module:
    """``mode`` ``none``: the model as it is; ``int8``: a dynamically quantized copy for the
    CPU (eval mode). A Seq2Seq or an Ensemble of them."""
    if mode == "none":
        return model
    if mode != "int8":
        raise ValueError(f"quantize={mode}: unknown value (choose {' | '.join(QUANTIZE_MODES)})")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize=int8: int8 decoding runs on the CPU only (set device=cpu)")
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    quant = torch.ao.quantization
    spec: dict[Any, Any] = {nn.Linear: quant.per_channel_dynamic_qconfig}  # a scale per row
    if lstms:
        spec[nn.LSTM] = quant.default_dynamic_qconfig  # per tensor: all the LSTM offers
    with warnings.catch_warnings():  # torch announces the move of its quantization to torchao
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quant.quantize_dynamic(model.eval(), spec, dtype=torch.qint8, inplace=False)
    if lstms:  # the quantized LSTM has no float weights for nmt.lstm to read
        for module in quantized.modules():
            if hasattr(module, "rnn_impl"):
                module.rnn_impl = "torch"
    return quantized.eval()
