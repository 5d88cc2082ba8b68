"""Typed configuration schemas for every config group.

Defaults live here and only here; YAML files under ``configs/`` state deltas. The entry points
(train.py, translate.py, prepare.py, evaluate.py) register these dataclasses in Hydra's
ConfigStore, compose, and convert to these objects with ``OmegaConf.to_object``; everything
below the entry point takes plain dataclasses. This module imports neither torch nor Hydra.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the value (one line)."""


def _fail(key: str, value: Any, what: str) -> None:
    raise ConfigError(f"{key}={value}: {what}")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        _fail(key, value, f"unknown value (choose {' | '.join(options)})")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        _fail(key, value, "must be greater than 0")


def _non_negative(key: str, value: float) -> None:
    if not value >= 0:
        _fail(key, value, "must be 0 or more")


def _fraction(key: str, value: float, closed: bool = False) -> None:
    """0 <= value < 1 (or <= 1 when ``closed``)."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        _fail(key, value, f"must be in [0, 1{']' if closed else ')'}")


QUANTIZE = ("none", "int8")  # decode-time quantization (nmt/quantize.py)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(key: str, value: str) -> None:
    if not DEVICE.fullmatch(value):
        _fail(key, value, "unknown device (choose auto | cpu | cuda | cuda:N)")


@dataclass
class DataConfig:
    """Where the aligned text lives: ``{dir}/{split}.{src}`` and ``{dir}/{split}.{tgt}``."""

    dir: str = "data/lo.de-en"
    src: str = "de"
    tgt: str = "en"
    train: str = "train"
    dev: str = "dev"
    test: str = "test"
    cache_dir: str = "data/cache"
    max_len: int = 100  # subword tokens per side; longer training pairs are dropped (counted)
    max_ratio: float = 3.0  # longer/shorter subword length ratio above which a pair is dropped
    num_threads: int = 0  # SentencePiece training threads; 0 = all cores
    num_workers: int = 0  # prepare's encoding processes, one chunk of pairs each; 0 = all cores

    def check(self, p: str = "data") -> None:
        for key in ("dir", "src", "tgt", "train", "dev", "test", "cache_dir"):
            if not getattr(self, key):
                _fail(f"{p}.{key}", "''", "must not be empty")
        if self.src == self.tgt:
            _fail(f"{p}.tgt", self.tgt, f"must differ from {p}.src (the file suffixes)")
        _non_negative(f"{p}.max_len", self.max_len)
        _non_negative(f"{p}.max_ratio", self.max_ratio)
        _non_negative(f"{p}.num_threads", self.num_threads)


@dataclass
class TokenizerConfig:
    joint: bool = True  # one model for both sides; False trains one per side
    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe | char | word
    character_coverage: float = 1.0
    input_sentence_size: int = 2_000_000  # sentences sampled for training the model (0: all)
    # and at most this many MB of text (0: no bound): SentencePiece's memory grows with the text
    # it samples, ~20 bytes a byte, so 40 MB keeps prepare near 1.1 GB (docs/benchmarks.md)
    input_sample_mb: float = 40.0
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    seed: int = 1
    # reuse SentencePiece model(s) instead of training: a .model file (joint), a directory with
    # spm.model or src.model + tgt.model (e.g. another run's data cache), or an nmt checkpoint;
    # the settings above are then ignored (the model brings its own vocabulary and special ids)
    model: str | None = None
    # the target vocabulary (output layer, target embeddings): used = the specials and every
    # piece in the target side of the training data, mapped to and from SentencePiece ids (a
    # checkpoint given as `model` brings its own); all = every piece of the target model
    target_vocab: str = "all"

    def check(self, p: str = "tokenizer") -> None:
        _choice(f"{p}.model_type", self.model_type, ("unigram", "bpe", "char", "word"))
        _choice(f"{p}.target_vocab", self.target_vocab, ("used", "all"))
        ids = {"pad_id": self.pad_id, "unk_id": self.unk_id, "bos_id": self.bos_id}
        ids["eos_id"] = self.eos_id
        for name, value in ids.items():
            _non_negative(f"{p}.{name}", value)
        if len(set(ids.values())) != len(ids):
            _fail(f"{p}.pad_id/unk_id/bos_id/eos_id", list(ids.values()), "must be distinct")
        if self.vocab_size <= max(ids.values()) + 1:
            _fail(f"{p}.vocab_size", self.vocab_size, "must exceed the special ids")
        if not 0 < self.character_coverage <= 1:
            _fail(f"{p}.character_coverage", self.character_coverage, "must be in (0, 1]")
        _non_negative(f"{p}.input_sentence_size", self.input_sentence_size)
        _non_negative(f"{p}.input_sample_mb", self.input_sample_mb)


@dataclass
class ModelConfig:
    emb_size: int = 256
    enc_hidden: int = 256  # per direction
    enc_layers: int = 2
    bidirectional: bool = True
    dec_hidden: int = 512
    dec_layers: int = 2
    attention: str = "general"  # dot | general | concat | bahdanau
    input_feeding: bool = False
    bridge: str = "learned"  # learned | copy | zero
    dropout: float = 0.2
    tie_output: bool = False  # output projection shares the target embeddings
    tie_embeddings: bool = False  # source and target share embeddings (joint vocabulary only)
    init: str = "uniform"  # uniform | xavier
    init_scale: float = 0.1
    # Every LSTM forget-gate bias at init (b_ih in the forget slice; b_hh's slice set to 0);
    # null leaves it to the init scheme's draw, as OpenNMT-py does (docs/benchmarks.md, "The
    # forget-gate bias").
    forget_bias: float | None = None
    # LSTM implementation: auto (nmt's packed loop on the CPU, torch/cuDNN on CUDA) | torch | nmt
    rnn_impl: str = "auto"

    def check(self, p: str = "model") -> None:
        for key in ("emb_size", "enc_hidden", "enc_layers", "dec_hidden", "dec_layers"):
            if not getattr(self, key) >= 1:
                _fail(f"{p}.{key}", getattr(self, key), "must be 1 or more")
        _choice(f"{p}.attention", self.attention, ("dot", "general", "concat", "bahdanau"))
        _choice(f"{p}.bridge", self.bridge, ("learned", "copy", "zero"))
        _choice(f"{p}.init", self.init, ("uniform", "xavier"))
        _choice(f"{p}.rnn_impl", self.rnn_impl, ("auto", "nmt", "torch"))
        _fraction(f"{p}.dropout", self.dropout)
        _positive(f"{p}.init_scale", self.init_scale)
        if self.forget_bias is not None and not math.isfinite(self.forget_bias):
            _fail(f"{p}.forget_bias", self.forget_bias, "must be a finite number or null")


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | inverse_sqrt | plateau
    warmup_updates: int = 0  # linear warmup (constant and inverse_sqrt)
    plateau_factor: float = 0.5
    plateau_patience: int = 2  # validations without improvement before decaying
    min_lr: float = 1e-6
    clip_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1

    def check(self, p: str = "optim") -> None:
        _choice(f"{p}.name", self.name, ("adam", "adamw", "sgd"))
        _choice(f"{p}.schedule", self.schedule, ("constant", "inverse_sqrt", "plateau"))
        _positive(f"{p}.lr", self.lr)
        for i, beta in enumerate(self.betas):
            _fraction(f"{p}.betas[{i}]", beta)
        _positive(f"{p}.eps", self.eps)
        for key in ("momentum", "weight_decay", "warmup_updates", "min_lr", "clip_norm"):
            _non_negative(f"{p}.{key}", getattr(self, key))
        if not 0 < self.plateau_factor < 1:
            _fail(f"{p}.plateau_factor", self.plateau_factor, "must be in (0, 1)")
        _non_negative(f"{p}.plateau_patience", self.plateau_patience)
        _fraction(f"{p}.label_smoothing", self.label_smoothing)


@dataclass
class TrainerConfig:
    max_tokens: int = 2000  # padded tokens per side per batch
    max_sentences: int = 0  # 0 = no limit
    pool_factor: int = 100  # sort pools of pool_factor * (batches' worth) examples
    accum_steps: int = 1
    max_updates: int = 0  # 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_time_min: float = 0.0  # wall-clock minutes; 0 = no limit
    valid_every: int = 500  # updates
    valid_max_sentences: int = 0  # 0 = whole dev set
    valid_beam_size: int = 1  # beam for the dev-set translation at each validation (1 = greedy)
    log_every: int = 50
    save_every: int = 500
    keep_best: int = 3
    early_stop_metric: str = "bleu"  # bleu | chrf | loss
    patience: int = 0  # validations without improvement; 0 disables early stopping
    max_bad_steps: int = 5  # consecutive non-finite losses before giving up
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 on CUDA only)
    # TF32 in float32 matmuls and cuDNN (the LSTM) on Ampere+ GPUs; off: fp32 means float32
    tf32: bool = False
    seed: int = 1
    progress: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    tensorboard: bool = True
    dist_timeout_s: int = 1800  # collective timeout across ranks

    def check(self, p: str = "trainer") -> None:
        for key in ("max_tokens", "accum_steps", "valid_every", "log_every", "save_every"):
            if not getattr(self, key) >= 1:
                _fail(f"{p}.{key}", getattr(self, key), "must be 1 or more")
        for key in ("valid_beam_size", "max_bad_steps", "dist_timeout_s"):
            if not getattr(self, key) >= 1:
                _fail(f"{p}.{key}", getattr(self, key), "must be 1 or more")
        for key in ("max_sentences", "pool_factor", "max_updates", "max_epochs"):
            _non_negative(f"{p}.{key}", getattr(self, key))
        for key in ("max_time_min", "valid_max_sentences", "keep_best", "patience"):
            _non_negative(f"{p}.{key}", getattr(self, key))
        _non_negative(f"{p}.num_threads", self.num_threads)
        _choice(f"{p}.early_stop_metric", self.early_stop_metric, ("bleu", "chrf", "loss"))
        _choice(f"{p}.precision", self.precision, ("fp32", "bf16", "fp16"))


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha; 0 = raw log-probability
    max_len_a: float = 1.5  # max output length = a * source length + b
    max_len_b: int = 10
    min_len: int = 0
    nbest: int = 1
    max_tokens: int = 6000  # source tokens per decoding batch

    def check(self, p: str = "decode") -> None:
        for key in ("beam_size", "nbest", "max_tokens"):
            if not getattr(self, key) >= 1:
                _fail(f"{p}.{key}", getattr(self, key), "must be 1 or more")
        if self.nbest > self.beam_size:
            _fail(f"{p}.nbest", self.nbest, f"must not exceed {p}.beam_size={self.beam_size}")
        for key in ("length_penalty", "max_len_a", "max_len_b", "min_len"):
            _non_negative(f"{p}.{key}", getattr(self, key))
        if self.max_len_a == 0 and self.max_len_b == 0:
            _fail(f"{p}.max_len_b", 0, f"with {p}.max_len_a=0 no output could be produced")


@dataclass
class MetricsConfig:
    """sacrebleu settings. By default they follow the target language as sacrebleu's own
    ``-l src-tgt`` does: BLEU's tokenizer is zh for zh, ja-mecab for ja, ko-mecab for ko, 13a
    otherwise; chrF and TER keep sacrebleu's defaults (they have no language-specific ones)."""

    lang: str | None = None  # target language; None = data.tgt / the checkpoint's / ref suffix
    tokenize: str | None = None  # BLEU tokenizer (13a, intl, zh, ja-mecab, ko-mecab, char, ...)
    lowercase: bool = False  # BLEU and chrF
    chrf_word_order: int = 0  # 2 = chrF++
    ter_normalized: bool = False
    ter_asian_support: bool = False
    ter_case_sensitive: bool = False

    def check(self, p: str = "metrics") -> None:
        # the tokenizer name is checked by nmt.metrics, against sacrebleu's own list
        _non_negative(f"{p}.chrf_word_order", self.chrf_word_order)


# Keys added after runs and checkpoints were first stored, with the value those had before the
# key existed: a run resumed from an old checkpoint keeps its behaviour, and its record is true.
OLD_VALUES: dict[str, dict[str, Any]] = {
    "tokenizer": {"target_vocab": "all", "input_sample_mb": 0.0},
    "model": {"forget_bias": 1.0},
}


def with_old_values(section: str, stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` (one section of a stored config) with the keys it predates set to the value
    it was made with."""
    return {**OLD_VALUES.get(section, {}), **stored}


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # validation and test scores
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # checkpoint to resume from; a run dir with last.pt resumes too
    out_dir: str | None = None  # None = Hydra's run directory
    # start a new run from this checkpoint's weights and SentencePiece model (fine-tuning on
    # new data); optimizer, schedule, counters and best score start fresh
    init_from: str | None = None
    eval_test: bool = True  # score best.pt on the test split when training ends

    def __post_init__(self) -> None:
        """Every value checked once, when Hydra (or a caller) builds the config."""
        self.data.check()
        self.tokenizer.check()
        self.model.check()
        self.optim.check()
        self.trainer.check()
        self.decode.check()
        self.metrics.check()
        check_device("device", self.device)
        if self.model.tie_embeddings and not self.tokenizer.joint:
            _fail("model.tie_embeddings", True, "needs a joint vocabulary (tokenizer.joint=true)")
        if self.model.tie_embeddings and self.tokenizer.target_vocab != "all":
            _fail(
                "model.tie_embeddings",
                True,
                "source and target share one embedding matrix, so the target side needs the "
                "whole vocabulary: set tokenizer.target_vocab=all",
            )


@dataclass
class PrepareConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        self.data.check()
        self.tokenizer.check()


@dataclass
class TranslateConfig:
    ckpt: str = "???"  # one path, or several joined by commas for an ensemble
    input: str = "-"
    output: str = "-"
    nbest_output: str | None = None  # write n-best lists with scores here
    # write each best hypothesis' hard alignment here, Pharaoh "i-j" (source i, target j)
    alignment_output: str | None = None
    alignment_unit: str = "word"  # word (whitespace-separated words) | subword (pieces)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    progress: bool = True
    chunk_lines: int = 10_000  # lines read, translated and written at a time (bounded memory)
    quantize: str = "none"  # none | int8 (CPU; see nmt/quantize.py)

    def __post_init__(self) -> None:
        self.decode.check()
        check_device("device", self.device)
        _choice("alignment_unit", self.alignment_unit, ("word", "subword"))
        if not self.chunk_lines >= 1:
            _fail("chunk_lines", self.chunk_lines, "must be 1 or more")
        _choice("quantize", self.quantize, QUANTIZE)


@dataclass
class ServeConfig:
    """``python -m nmt.serve``: an HTTP JSON API over one loaded model (see nmt/serve.py)."""

    ckpt: str = "???"  # one path, or several joined by commas for an ensemble
    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int = 8000  # 0 = any free port (the chosen one is logged)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # defaults for every request
    device: str = "auto"
    quantize: str = "none"  # none | int8 (CPU)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    batching: bool = True  # false: decode one request at a time
    batch_wait_ms: float = 5.0  # how long a request waits for others to share its batch
    max_queue: int = 256  # lines accepted and not yet answered; beyond it 503 + Retry-After
    max_lines: int = 64  # lines per request (413 beyond)
    max_chars: int = 20_000  # characters per request (413 beyond)
    max_beam_size: int = 16  # largest beam_size a request may ask for
    retry_after_s: int = 1  # the Retry-After of a 503
    shutdown_timeout_s: float = 60.0  # SIGTERM: longest wait for accepted requests

    def __post_init__(self) -> None:
        self.decode.check()
        check_device("device", self.device)
        _choice("quantize", self.quantize, QUANTIZE)
        if not self.host:
            _fail("host", "''", "must not be empty")
        if not 0 <= self.port <= 65535:
            _fail("port", self.port, "must be in [0, 65535]")
        for key in ("max_queue", "max_lines", "max_chars", "max_beam_size", "retry_after_s"):
            if not getattr(self, key) >= 1:
                _fail(key, getattr(self, key), "must be 1 or more")
        for key in ("threads", "batch_wait_ms", "shutdown_timeout_s"):
            _non_negative(key, getattr(self, key))
        if self.max_lines > self.max_queue:
            _fail("max_lines", self.max_lines, f"must not exceed max_queue={self.max_queue}")
        if self.decode.beam_size > self.max_beam_size:
            _fail(
                "decode.beam_size",
                self.decode.beam_size,
                f"must not exceed max_beam_size={self.max_beam_size}",
            )


@dataclass
class EvaluateConfig:
    ref: str = "???"  # reference file; several (one reference set each) joined by commas
    ckpt: str | None = None  # translate src with this checkpoint (or comma-joined ensemble)
    src: str | None = None  # source file (with ckpt)
    hyp: str | None = None  # hypothesis file(s) to score as they are, joined by commas
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    metric_names: list[str] = field(default_factory=lambda: ["bleu", "chrf", "ter"])
    paired: str | None = None  # compare systems: bs (paired bootstrap) | ar (approx. random.)
    paired_n: int = 0  # resamples (bs) or trials (ar); 0 = sacrebleu's 1000 / 10000
    confidence_n: int = 0  # > 1: bootstrap 95% confidence interval of a single system
    width: int = 1  # decimals of the scores (sacrebleu's -w)
    hyp_output: str | None = None  # where to write the translations
    json_output: str | None = None  # where to write the scores (sacrebleu's JSON shape)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    progress: bool = True
    quantize: str = "none"  # none | int8 (CPU; see nmt/quantize.py)

    def __post_init__(self) -> None:
        self.decode.check()
        self.metrics.check()
        check_device("device", self.device)
        if self.paired is not None:
            _choice("paired", self.paired, ("bs", "ar"))
        if not self.metric_names:
            _fail("metric_names", "[]", "name one metric or more (bleu, chrf, ter)")
        for name in self.metric_names:
            _choice("metric_names", name, ("bleu", "chrf", "ter"))
        for key in ("paired_n", "confidence_n", "width"):
            _non_negative(key, getattr(self, key))
        _choice("quantize", self.quantize, QUANTIZE)
