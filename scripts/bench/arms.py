"""What scripts/benchmark.py runs: the arms (one training run each) and the ablations that
compare two of them. Shared by the parent and the worker processes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Arm:
    """What one training run varies relative to the composed config."""

    batching: str = "bucketed"  # bucketed | random
    input_feeding: bool = False
    encoder: str = "packed"  # packed | padded (unpacked LSTM, measurement only)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    rnn_impl: str = "auto"  # model.rnn_impl: auto | nmt | torch
    malloc: bool = True  # nmt.runtime.tune_malloc() in the worker

    def describe(self) -> str:
        return ", ".join(
            [
                self.batching,
                "input feeding" if self.input_feeding else "fast path",
                f"{self.encoder} encoder",
                self.precision,
                "compiled" if self.compile else "eager",
                f"{self.rnn_impl} LSTM",
                "tuned malloc" if self.malloc else "default malloc",
            ]
        )


# name -> (Arm field, value of arm A, value of arm B, label A, label B); ratio = A / B
ABLATIONS: dict[str, tuple[str, Any, Any, str, str]] = {
    "batching": ("batching", "bucketed", "random", "bucketed", "random"),
    "input_feeding": ("input_feeding", False, True, "fast path", "input feeding"),
    "packing": ("encoder", "packed", "padded", "packed encoder", "padded encoder"),
    "precision": ("precision", "bf16", "fp32", "bf16 autocast", "fp32"),
    "compile": ("compile", True, False, "torch.compile", "eager"),
    "rnn_impl": ("rnn_impl", "nmt", "torch", "nmt.lstm loops", "torch nn.LSTM"),
    "malloc": ("malloc", True, False, "tuned malloc", "default malloc"),
}

QUICK_OVERRIDES = [
    "model=tiny",
    "tokenizer.vocab_size=300",
    "trainer.max_tokens=400",
    "decode.max_len_a=1.0",
    "decode.max_len_b=5",
]


def plan_arms(base: Arm, ablations: list[str]) -> tuple[list[Arm], list[tuple[str, Arm, Arm]]]:
    """Distinct runs (base first) and (ablation, arm A, arm B) triples."""
    arms = [base]
    pairs = []
    for name in ablations:
        field, a_value, b_value, _, _ = ABLATIONS[name]
        a, b = replace(base, **{field: a_value}), replace(base, **{field: b_value})
        pairs.append((name, a, b))
        arms += [x for x in (a, b) if x not in arms]
    return arms, pairs
