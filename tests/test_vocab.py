"""The target vocabulary (tokenizer.target_vocab): the mapping against plain SentencePiece,
prepared caches with `used` and `all`, checkpoints that carry it (and old ones that do not),
fine-tuning and resuming with it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from hydra import compose, initialize_config_dir

from nmt.checkpoint import average_checkpoints, load_checkpoint, load_model, model_config_from
from nmt.compose import CONFIGS, compose_train
from nmt.config import (
    ConfigError,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
)
from nmt.data import prepare
from nmt.resume import init_from_config
from nmt.tokenizer import Tokenizer, read_tokenizer, split_lines
from nmt.train import main as _register  # noqa: F401  (registers train_schema)
from nmt.train import resume_config
from nmt.trainer import train
from nmt.translation import load_for_decoding, translate_lines
from nmt.vocab import TargetVocab, TargetVocabError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.es-en"
SIZES = {"train": 300, "dev": 40, "test": 20}
VOCAB = 300
SPECIALS = (0, 1, 2, 3)  # pad, unk, bos, eos: TokenizerConfig's defaults


def demo(split: str, lang: str) -> list[str]:
    return split_lines((DEMO / f"{split}.{lang}").read_text("utf-8"))[: SIZES[split]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for split in SIZES:
        for lang in ("es", "en"):
            text = "".join(line + "\n" for line in demo(split, lang))
            (d / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def sp_tok(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Path]:
    """A joint 300-piece model trained on the corpus, without a target vocabulary."""
    out = tmp_path_factory.mktemp("spm")
    cfg = TokenizerConfig(vocab_size=VOCAB, target_vocab="used")
    return Tokenizer.train(cfg, [corpus / "train.es"], [corpus / "train.en"], out, 1), out


def reference_keep(model: Path, lines: list[str]) -> list[int]:
    """Specials and every SentencePiece id in `lines`, by plain SentencePiece, ascending (the
    default specials 0..3 are the lowest ids)."""
    ref = spm.SentencePieceProcessor(model_file=str(model))
    return sorted(set(SPECIALS) | {i for line in lines for i in ref.encode(line)})


# ---------------------------------------------------------------------------------------------
# the mapping


def test_used_keeps_specials_at_their_ids_and_maps_both_ways_exactly() -> None:
    counts = np.zeros(20, dtype=np.int64)
    counts[[0, 4, 7, 7, 12, 19]] += 1  # 0 is pad: counted or not, kept once
    v = TargetVocab.used(counts, SPECIALS)
    assert v.keep.tolist() == [0, 1, 2, 3, 4, 7, 12, 19]
    assert len(v) == 8 and v.sp_size == 20
    model = v.model_ids(v.keep)
    assert model.tolist() == list(range(8))
    assert v.sp_ids(model).tolist() == v.keep.tolist()  # sp -> model -> sp
    dropped = [i for i in range(20) if i not in v.keep]
    assert v.model_ids(np.array(dropped)).tolist() == [1] * len(dropped)  # -> unk
    assert v.model_list([19, 5, 4]) == [7, 1, 4] and v.sp_list([7, 1, 4]) == [19, 1, 4]


def test_specials_keep_their_numbers_wherever_they_are() -> None:
    counts = np.zeros(30, dtype=np.int64)
    counts[[0, 1, 2, 20, 25]] = 3
    specials = (5, 3, 6, 4)  # pad, unk, bos, eos away from 0..3
    v = TargetVocab.used(counts, specials)
    assert v.keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 20, 25]
    for s in specials:
        assert v.model_ids(np.array([s]))[0] == s and v.keep[s] == s
    assert v.model_ids(np.array([29]))[0] == 3  # unk
    far = np.zeros(30, dtype=np.int64)
    far[0] = 1
    with pytest.raises(TargetVocabError, match="special id 28 lies beyond"):
        TargetVocab.used(far, (0, 1, 2, 28))


@pytest.mark.parametrize(
    "keep, needle",
    [([0, 1, 2, 3, 3], "twice"), ([0, 1, 2, 3, 20], r"\[0, 20\)"), ([1, 0, 2, 3], "special id")],
)
def test_bad_mappings_are_refused(keep: list[int], needle: str) -> None:
    with pytest.raises(TargetVocabError, match=needle):
        TargetVocab(keep, 20, SPECIALS)


def test_tokenizer_with_target_vocab_against_sentencepiece(sp_tok, tmp_path: Path) -> None:
    tok, out = sp_tok
    ref = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    en = demo("train", "en")
    counts = np.bincount([i for line in en for i in ref.encode(line)], minlength=VOCAB)
    mapped = tok.with_target_vocab(TargetVocab.used(counts, tok.special_ids))
    keep = reference_keep(out / "spm.model", en)
    assert mapped.tgt_vocab is not None and mapped.tgt_vocab.keep.tolist() == keep
    assert mapped.tgt_vocab_size == len(keep) < VOCAB == mapped.src_vocab_size
    assert mapped.special_ids == tok.special_ids == SPECIALS

    ids = mapped.encode_tgt(en)
    assert [[keep[i] for i in seq] for seq in ids] == [ref.encode(x) for x in en]
    assert max(max(seq) for seq in ids if seq) < len(keep)
    assert mapped.decode_tgt(ids) == ref.decode([ref.encode(x) for x in en]) == en
    assert mapped.tgt_pieces(ids[0]) == ref.encode(en[0], out_type=str)
    padded = [tok.bos_id, *ids[0], tok.eos_id, tok.pad_id]
    assert mapped.decode_tgt([padded]) == [en[0]]

    # pieces the target side never used -> unk; the source side is untouched
    es = demo("train", "es")
    sp_es = [ref.encode(x) for x in es]
    assert mapped.encode_tgt(es) == [[keep.index(i) if i in keep else 1 for i in s] for s in sp_es]
    assert any(i not in keep for s in sp_es for i in s)
    assert mapped.encode_src(es) == sp_es

    # serialized, saved and loaded: the same mapping; without it, the old fingerprint
    again = Tokenizer.from_bytes(mapped.to_bytes())
    assert again.to_bytes() == mapped.to_bytes() and again.encode_tgt(es) == mapped.encode_tgt(es)
    mapped.save(tmp_path / "m")
    loaded = Tokenizer.load(tmp_path / "m")
    assert loaded.fingerprint() == again.fingerprint() == mapped.fingerprint()
    assert mapped.fingerprint() != tok.fingerprint() == mapped.spm_only().fingerprint()
    assert "tgt_keep" not in tok.to_bytes()  # as checkpoints from before target vocabularies
    # a directory lends its SentencePiece model only
    assert read_tokenizer(str(tmp_path / "m")).fingerprint() == tok.fingerprint()


# ---------------------------------------------------------------------------------------------
# prepared caches


def data_config(corpus: Path, cache: Path) -> DataConfig:
    return DataConfig(dir=str(corpus), src="es", tgt="en", cache_dir=str(cache), num_workers=1)


def test_prepare_used_and_all(corpus: Path, tmp_path: Path) -> None:
    cfg = data_config(corpus, tmp_path / "cache")
    used = prepare(cfg, TokenizerConfig(vocab_size=VOCAB, target_vocab="used"))
    full = prepare(cfg, TokenizerConfig(vocab_size=VOCAB, target_vocab="all"))
    assert used.path != full.path  # the setting is part of the cache key
    model = used.path / "spm.model"
    assert model.read_bytes() == (full.path / "spm.model").read_bytes()
    ref = spm.SentencePieceProcessor(model_file=str(model))
    kept_en = used.raw("train")[1]
    keep = reference_keep(model, kept_en)

    assert full.tokenizer.tgt_vocab is None and full.tokenizer.tgt_vocab_size == VOCAB
    assert full.summary["vocab_size"] == {"src": VOCAB, "tgt": VOCAB}
    tv = used.tokenizer.tgt_vocab
    assert tv is not None and tv.keep.tolist() == keep
    assert np.load(used.path / "tgt_vocab.npy").tolist() == keep
    assert used.summary["vocab_size"] == {"src": VOCAB, "tgt": len(keep)}
    assert used.summary["target_vocab"]["size"] == len(keep)
    assert used.summary["target_vocab"]["sentencepiece_size"] == VOCAB

    for split in ("train", "dev", "test"):
        ds_used, ds_full = used.dataset(split), full.dataset(split)
        en = used.raw(split)[1]
        sp = [ref.encode(x) for x in en]
        assert [ds_full[i][1].tolist() for i in range(len(ds_full))] == sp
        want = [[keep.index(i) if i in keep else 1 for i in s] for s in sp]
        assert [ds_used[i][1].tolist() for i in range(len(ds_used))] == want
        assert [ds_used[i][0].tolist() for i in range(len(ds_used))] == [
            ds_full[i][0].tolist() for i in range(len(ds_full))
        ]
        new_unk = sum(i not in keep and i != 1 for s in sp for i in s)
        assert used.summary["target_vocab"]["new_unk"][split] == new_unk
        assert full.summary["target_vocab"]["new_unk"][split] == 0
    assert used.summary["target_vocab"]["new_unk"]["train"] == 0

    again = prepare(cfg, TokenizerConfig(vocab_size=VOCAB, target_vocab="used"))
    assert again.reused and again.tokenizer.fingerprint() == used.tokenizer.fingerprint()


def test_tie_embeddings_needs_the_whole_vocabulary() -> None:
    tied = ModelConfig(tie_embeddings=True)
    used = TokenizerConfig(target_vocab="used")
    with pytest.raises(ConfigError, match=r"tie_embeddings=True: .*tokenizer\.target_vocab=all"):
        TrainConfig(model=tied, tokenizer=used)
    cfg = TrainConfig(model=tied)  # target_vocab=all, the default
    assert cfg.model.tie_embeddings
    with pytest.raises(ConfigError, match="target_vocab=some: unknown value"):
        TokenizerConfig(target_vocab="some").check()


# ---------------------------------------------------------------------------------------------
# training, checkpoints, decoding


def overrides(corpus: Path, cache: Path, *extra: str) -> list[str]:
    """A tiny run with ``tokenizer.target_vocab=used`` unless ``extra`` sets it."""
    used = ["tokenizer.target_vocab=used"]
    return [
        "data=demo_es_en",
        f"data.dir={corpus}",
        f"data.cache_dir={cache}",
        "data.num_workers=1",
        "model=tiny",
        f"tokenizer.vocab_size={VOCAB}",
        "trainer.max_tokens=600",
        "trainer.max_updates=4",
        "trainer.valid_every=4",
        "trainer.progress=false",
        "decode.beam_size=2",
        "decode.max_len_a=1.0",
        "decode.max_len_b=5",
        "device=cpu",
        "eval_test=false",
        *extra,
        *([] if any(e.startswith("tokenizer.target_vocab=") for e in extra) else used),
    ]


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    train(compose_train(overrides(corpus, d / "cache")), d / "run")
    return d


def test_trained_checkpoint_has_one_output_row_per_kept_piece(trained: Path, corpus) -> None:
    ckpt = load_checkpoint(trained / "run/last.pt")
    model, tok = load_for_decoding(str(trained / "run/last.pt"))
    [cache] = [p for p in (trained / "cache").iterdir() if not p.name.startswith(".")]
    keep = reference_keep(cache / "spm.model", split_lines((cache / "train.tgt.txt").read_text()))
    assert ckpt["tokenizer"]["tgt_keep"] == keep and tok.tgt_vocab is not None
    assert ckpt["vocab"]["tgt_vocab_size"] == len(keep) < VOCAB == ckpt["vocab"]["src_vocab_size"]
    assert ckpt["model"]["output.weight"].shape[0] == len(keep)
    assert ckpt["model"]["decoder.embedding.weight"].shape[0] == len(keep)
    assert ckpt["model"]["encoder.embedding.weight"].shape[0] == VOCAB

    lines = demo("test", "es")[:6]
    decode = DecodeConfig(beam_size=3, nbest=2, max_len_a=1.0, max_len_b=5)
    hyps = translate_lines(model, tok, lines, decode, "cpu")
    ref = spm.SentencePieceProcessor(model_file=str(cache / "spm.model"))
    for hs in hyps:
        assert len(hs) == 2 and hs[0].score >= hs[1].score
        for h in hs:  # model ids out; their pieces are SentencePiece's pieces of those ids
            sp = [keep[i] for i in h.tokens]
            assert tok.decode_tgt([list(h.tokens)]) == [ref.decode(sp)]
            assert tok.tgt_pieces(list(h.tokens)) == [ref.id_to_piece(i) for i in sp]


def test_old_checkpoint_without_mapping_loads_and_decodes(tiny_ckpt) -> None:
    ckpt = load_checkpoint(tiny_ckpt.path)
    assert "tgt_keep" not in ckpt["tokenizer"]  # as written before target vocabularies
    model, tok = load_for_decoding(str(tiny_ckpt.path))
    assert tok.tgt_vocab is None and tok.tgt_vocab_size == ckpt["vocab"]["tgt_vocab_size"]
    lines = ["La casa es grande.", "Hola."]
    decode = DecodeConfig(beam_size=1, max_len_a=1.0, max_len_b=4)
    hyps = translate_lines(model, tok, lines, decode, "cpu")
    want = tiny_ckpt.tokenizer.decode_tgt([list(h[0].tokens) for h in hyps])
    assert tok.decode_tgt([list(h[0].tokens) for h in hyps]) == want


def test_fine_tuning_keeps_the_checkpoints_target_vocabulary(trained: Path, tmp_path) -> None:
    ckpt_path = trained / "run/last.pt"
    ckpt = load_checkpoint(ckpt_path)
    other = tmp_path / "other"  # new data: the dev/test lines, and Spanish on the target side
    other.mkdir()
    spanish = demo("train", "es")
    for split, stem in (("train", "dev"), ("dev", "test"), ("test", "test")):
        for lang in ("es", "en"):
            lines = demo(stem, lang) + (spanish if split == "train" else [])
            text = "".join(line + "\n" for line in lines)
            (other / f"{split}.{lang}").write_text(text, encoding="utf-8")
    cfg = compose_train(overrides(other, tmp_path / "cache", "trainer.max_updates=1"))
    cfg, _ = init_from_config(replace(cfg, init_from=str(ckpt_path)))
    assert cfg.tokenizer.target_vocab == "used" and cfg.tokenizer.model == str(ckpt_path)
    prep = prepare(cfg.data, cfg.tokenizer)
    keep = ckpt["tokenizer"]["tgt_keep"]
    assert prep.tokenizer.to_bytes() == ckpt["tokenizer"]  # the checkpoint's mapping, exactly
    ref = spm.SentencePieceProcessor(model_proto=ckpt["tokenizer"]["tgt"])
    en = prep.raw("train")[1]
    new_unk = sum(i not in keep and i != 1 for x in en for i in ref.encode(x))
    assert new_unk > 0 and prep.summary["target_vocab"]["new_unk"]["train"] == new_unk
    train(cfg, tmp_path / "tuned")
    tuned = load_checkpoint(tmp_path / "tuned/last.pt")
    assert tuned["tokenizer"] == ckpt["tokenizer"]
    assert tuned["model"]["output.weight"].shape == ckpt["model"]["output.weight"].shape

    # a checkpoint without a mapping is fine-tuned with the whole vocabulary
    old = dict(ckpt, tokenizer={k: v for k, v in ckpt["tokenizer"].items() if k != "tgt_keep"})
    torch.save(old, tmp_path / "old.pt")
    cfg_old, _ = init_from_config(replace(cfg, init_from=str(tmp_path / "old.pt")))
    assert cfg_old.tokenizer.target_vocab == "all"


def test_target_vocab_all_reproduces_the_old_sizes(corpus: Path, tmp_path: Path) -> None:
    cfg = compose_train(overrides(corpus, tmp_path / "cache", "tokenizer.target_vocab=all"))
    train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert "tgt_keep" not in ckpt["tokenizer"]
    assert ckpt["vocab"]["tgt_vocab_size"] == ckpt["vocab"]["src_vocab_size"] == VOCAB
    assert ckpt["model"]["output.weight"].shape[0] == VOCAB
    model, tok, _ = load_model(tmp_path / "run/last.pt")
    assert tok.tgt_vocab is None and model.tgt_vocab_size == VOCAB

    # a run written before the options (no tokenizer.target_vocab, tokenizer.input_sample_mb or
    # model.forget_bias in its stored config) resumes with the values it was made with, not
    # with today's defaults
    stored = ckpt["train_config"]
    del stored["tokenizer"]["target_vocab"], stored["tokenizer"]["input_sample_mb"]
    del stored["model"]["forget_bias"], ckpt["model_config"]["forget_bias"]
    torch.save(ckpt, tmp_path / "run/last.pt")
    torch.save(ckpt, tmp_path / "old.pt")
    assert model_config_from(ckpt).forget_bias == 1.0
    given = ["trainer.max_updates=5"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        dcfg = compose("train", overrides=overrides(corpus, tmp_path / "cache", *given))
    resumed = resume_config(dcfg, given, tmp_path / "run")
    assert resumed.tokenizer.target_vocab == "all"
    assert resumed.tokenizer.input_sample_mb == 0.0 and resumed.model.forget_bias == 1.0
    assert train(resumed, tmp_path / "run")["updates"] == 5
    # its checkpoints from before and after the resume average as one architecture
    average_checkpoints([tmp_path / "old.pt", tmp_path / "run/last.pt"])


def test_resume_keeps_the_runs_target_vocabulary(trained: Path, corpus: Path) -> None:
    before = load_checkpoint(trained / "run/last.pt")
    cfg = compose_train(overrides(corpus, trained / "cache", "trainer.max_updates=5"))
    assert train(cfg, trained / "run")["updates"] == 5
    after = load_checkpoint(trained / "run/last.pt")
    assert after["tokenizer"] == before["tokenizer"] and "tgt_keep" in after["tokenizer"]
