"""Typed configuration schemas for every config group.

Defaults live here and only here; YAML files under ``configs/`` state deltas. The entry points
(train.py, translate.py, prepare.py, evaluate.py) register these dataclasses in Hydra's
ConfigStore, compose, and convert to these objects with ``OmegaConf.to_object``; everything
below the entry point takes plain dataclasses. This module imports neither torch nor Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class TokenizerConfig:
    joint: bool = True  # one model for both sides; False trains one per side
    vocab_size: int = 8000
    model_type: str = "unigram"  # unigram | bpe | char | word
    character_coverage: float = 1.0
    input_sentence_size: int = 2_000_000  # sentences sampled for training the model
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    seed: int = 1


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
    # LSTM implementation: auto (nmt's packed loop on the CPU, torch/cuDNN on CUDA) | torch | nmt
    rnn_impl: str = "auto"


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
    seed: int = 1
    progress: bool = True
    num_threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    tensorboard: bool = True
    dist_timeout_s: int = 1800  # collective timeout across ranks


@dataclass
class DecodeConfig:
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha; 0 = raw log-probability
    max_len_a: float = 1.5  # max output length = a * source length + b
    max_len_b: int = 10
    min_len: int = 0
    nbest: int = 1
    max_tokens: int = 6000  # source tokens per decoding batch


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # checkpoint to resume from; a run dir with last.pt resumes too
    out_dir: str | None = None  # None = Hydra's run directory
    eval_test: bool = True  # score best.pt on the test split when training ends


@dataclass
class PrepareConfig:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class TranslateConfig:
    ckpt: str = "???"  # one path, or several joined by commas for an ensemble
    input: str = "-"
    output: str = "-"
    nbest_output: str | None = None  # write n-best lists with scores here
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    progress: bool = True


@dataclass
class EvaluateConfig:
    ckpt: str = "???"
    src: str = "???"  # source file
    ref: str = "???"  # reference file
    hyp_output: str | None = None  # where to write the translations
    json_output: str | None = None  # where to write the scores
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    progress: bool = True
