"""Tests run small models: one intra-op thread avoids oversubscribing shared 2-core machines."""

import torch

torch.set_num_threads(1)


# -------------------------------------------------------------- a tiny checkpoint, made fast

from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TinyCheckpoint:
    path: Path  # checkpoint file (data.tgt = "en")
    dir: Path  # where it lives, with src.es / src.en files of a few demo lines
    model: torch.nn.Module
    tokenizer: object


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    """An untrained tiny es->en model with a 300-piece SentencePiece model from the demo data,
    saved as a real checkpoint (seconds to make; translations are nonsense)."""
    from nmt.checkpoint import model_payload, save_checkpoint
    from nmt.config import DataConfig, ModelConfig, TokenizerConfig, TrainConfig
    from nmt.model import build_model
    from nmt.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("tiny_ckpt")
    files = {}
    for lang in ("es", "en"):
        lines = (ROOT / "data/demo.es-en" / f"train.{lang}").read_text(encoding="utf-8")
        files[lang] = d / f"train.{lang}"
        files[lang].write_text("\n".join(lines.splitlines()[:1000]) + "\n", encoding="utf-8")
        test = (ROOT / "data/demo.es-en" / f"test.{lang}").read_text(encoding="utf-8")
        (d / f"test.{lang}").write_text("\n".join(test.splitlines()[:6]) + "\n", encoding="utf-8")
    tok = Tokenizer.train(
        TokenizerConfig(vocab_size=300), [files["es"]], [files["en"]], d / "spm", num_threads=1
    )
    torch.manual_seed(0)
    mcfg = ModelConfig(emb_size=16, enc_hidden=16, enc_layers=1, dec_hidden=32, dec_layers=1)
    model = build_model(mcfg, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id).eval()
    payload = model_payload(model, mcfg, tok)
    payload["train_config"] = asdict(TrainConfig(data=DataConfig(src="es", tgt="en")))
    path = d / "tiny.pt"
    save_checkpoint(path, payload)
    return TinyCheckpoint(path, d, model, tok)
