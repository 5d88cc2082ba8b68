"""int8 inference on the CPU: dynamic quantization of a loaded model's linear layers and LSTMs.

``quantize_model(model, "int8")`` returns a copy of the model in which every ``nn.Linear``
(attention key and query projections, the bridge, the decoder's combine layer, the output
projection over the vocabulary) is replaced by PyTorch's dynamically quantized module
(``torch.ao.nn.quantized.dynamic``): weights stored as int8 with one scale per output row,
activations quantized on the fly per call, int32 accumulation (fbgemm, using AVX-512 VNNI where
the CPU has it). Embeddings stay float32 (a table look-up has no matmul to speed up).

The LSTMs (``lstms=True``, the default):

- the encoder's ``nn.LSTM`` becomes torch's dynamically quantized LSTM (one scale per matrix,
  all it offers). nmt's own CPU LSTM (``nmt.lstm``) reads float weights, so the encoder is
  switched to ``rnn_impl=torch``;
- the decoder's ``nn.LSTM`` becomes a ``nmt.fused_step.FusedStepLSTM``: one ``nn.Linear`` per
  layer over the joined input and state, the embedding's share of the bottom layer as a float
  table, one sigmoid for the four gates; its linear layers are then quantized like the others
  (one int8 matmul per layer and step, a scale per gate row). On 500 dev sentences with the
  reference model this decodes beam 5 in about 0.9 of the time torch's quantized LSTM takes
  (docs/benchmarks.md, "The decoder step, fused (fp32 and int8)").

The measurements behind these choices are in docs/benchmarks.md ("int8 on the CPU").

Quantization is applied after loading, at decode time (``quantize=int8`` on ``nmt-translate``,
``nmt-serve`` and ``nmt-evaluate``, ``Translator.load(..., quantize="int8")``): the checkpoint
stays the float one, so there is no second file to keep in step with it, and loading stays
``weights_only`` (a quantized state dict holds packed-weight objects the safe loader refuses).
A quantized model decodes (incremental steps); it cannot be trained or teacher-forced.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from nmt.decoder import fuse_decoders
from nmt.fused_step import FusedStepLSTM

QUANTIZE_MODES = ("none", "int8")
LSTMS = True  # quantize the LSTMs as well as the linear layers (see the module docstring)


def quantize_model(model: nn.Module, mode: str, lstms: bool = LSTMS) -> nn.Module:
    """``mode`` ``none``: the model as it is; ``int8``: a dynamically quantized copy for the
    CPU (eval mode). A Seq2Seq or an Ensemble of them, fused for decoding or not.
    ``lstms=False`` (a benchmark variant) quantizes the linear layers only: the LSTMs, fused
    ones included, stay float."""
    if mode == "none":
        return model
    if mode != "int8":
        raise ValueError(f"quantize={mode}: unknown value (choose {' | '.join(QUANTIZE_MODES)})")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("quantize=int8: int8 decoding runs on the CPU only (set device=cpu)")
    if "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
    quant = torch.ao.quantization
    model = copy.deepcopy(model).eval()  # the float model is left as it is
    if lstms:  # the decoders' LSTMs: fused steps whose nn.Linear layers become int8
        fuse_decoders(model)
    fused = [name for name, m in model.named_modules() if isinstance(m, FusedStepLSTM)]
    spec: dict[str, Any] = {}  # by module name, so that lstms=False keeps fused LSTMs float
    for name, module in model.named_modules():
        in_lstm = any(name.startswith(f + ".") for f in fused)
        if isinstance(module, nn.Linear) and (lstms or not in_lstm):
            spec[name] = quant.per_channel_dynamic_qconfig  # a scale per row
        elif isinstance(module, nn.LSTM) and lstms:
            spec[name] = quant.default_dynamic_qconfig  # per tensor: all the LSTM offers
    with warnings.catch_warnings():  # torch announces the move of its quantization to torchao
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quant.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    if lstms:  # the encoder's quantized LSTM has no float weights for nmt.lstm to read
        for module in quantized.modules():
            if hasattr(module, "rnn_impl"):
                module.rnn_impl = "torch"
    return quantized.eval()
