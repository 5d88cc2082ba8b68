"""Tokenizer on a slice of the shipped demo.es-en corpus: round trip, special ids, serialization,
joint vs separate models, checked against SentencePiece itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from nmt.config import TokenizerConfig
from nmt.tokenizer import Tokenizer, sample_size, sampled_lines, split_lines

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.es-en"
N_LINES = 500
VOCAB = 300


def head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(line + "\n" for line in split_lines(src.read_text("utf-8"))[:n]))
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("demo")
    return head(DEMO / "train.es", d / "train.es", N_LINES), head(
        DEMO / "train.en", d / "train.en", N_LINES
    )


@pytest.fixture(scope="module")
def joint(corpus, tmp_path_factory) -> tuple[Tokenizer, Path]:
    out = tmp_path_factory.mktemp("joint")
    return Tokenizer.train(TokenizerConfig(vocab_size=VOCAB), [corpus[0]], [corpus[1]], out), out


def lines(path: Path) -> list[str]:
    return split_lines(path.read_text("utf-8"))


def test_round_trip(joint, corpus):
    tok, _ = joint
    for path in corpus:
        text = lines(path)
        ids = tok.encode_tgt(text)
        assert tok.decode_tgt(ids) == text
    assert tok.decode_tgt(tok.encode_src(lines(corpus[0]))) == lines(corpus[0])


def test_encoding_matches_sentencepiece_and_has_no_specials(joint, corpus):
    tok, out = joint
    reference = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    text = lines(corpus[1])[:50]
    ids = tok.encode_tgt(text, num_threads=1)
    assert ids == [reference.encode(line) for line in text]
    specials = {tok.pad_id, tok.bos_id, tok.eos_id}
    assert all(not specials & set(seq) for seq in ids)


def test_special_ids_default(joint):
    tok, out = joint
    cfg = TokenizerConfig()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (
        cfg.pad_id,
        cfg.unk_id,
        cfg.bos_id,
        cfg.eos_id,
    )
    reference = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert reference.id_to_piece(tok.pad_id) == "<pad>"
    assert reference.id_to_piece(tok.eos_id) == "</s>"
    assert tok.src_vocab_size == tok.tgt_vocab_size == VOCAB


def test_special_ids_as_configured_and_distinct(corpus, tmp_path):
    cfg = TokenizerConfig(vocab_size=VOCAB, pad_id=3, unk_id=0, bos_id=1, eos_id=2)
    tok = Tokenizer.train(cfg, [corpus[0]], [corpus[1]], tmp_path)
    ids = (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id)
    assert ids == (3, 0, 1, 2)
    assert len(set(ids)) == 4


def test_decode_strips_specials(joint, corpus):
    tok, _ = joint
    line = lines(corpus[1])[0]
    ids = tok.encode_tgt([line])[0]
    padded = [tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode_tgt([padded]) == [line]


def test_bytes_round_trip_and_fingerprint(joint, corpus, tmp_path):
    tok, out = joint
    state = tok.to_bytes()
    assert state["joint"] is True and state["src"] == (out / "spm.model").read_bytes()
    again = Tokenizer.from_bytes(state)
    loaded = Tokenizer.load(out)
    text = lines(corpus[0])[:20]
    assert again.encode_src(text) == loaded.encode_src(text) == tok.encode_src(text)
    assert again.fingerprint() == loaded.fingerprint() == tok.fingerprint()
    other = Tokenizer.train(
        TokenizerConfig(vocab_size=VOCAB + 20), [corpus[0]], [corpus[1]], tmp_path
    )
    assert other.fingerprint() != tok.fingerprint()


def test_training_is_deterministic(joint, corpus, tmp_path):
    tok, _ = joint
    again = Tokenizer.train(TokenizerConfig(vocab_size=VOCAB), [corpus[0]], [corpus[1]], tmp_path)
    assert again.fingerprint() == tok.fingerprint()


def test_separate_models(corpus, tmp_path):
    cfg = TokenizerConfig(joint=False, vocab_size=VOCAB)
    tok = Tokenizer.train(cfg, [corpus[0]], [corpus[1]], tmp_path)
    assert not tok.joint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.model", "tgt.model"]
    src_ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "src.model"))
    tgt_ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "tgt.model"))
    es, en = lines(corpus[0])[:30], lines(corpus[1])[:30]
    assert tok.encode_src(es) == [src_ref.encode(x) for x in es]
    assert tok.encode_tgt(en) == [tgt_ref.encode(x) for x in en]
    assert tok.decode_tgt(tok.encode_tgt(en)) == en
    loaded = Tokenizer.load(tmp_path)
    assert loaded.fingerprint() == tok.fingerprint()
    assert Tokenizer.from_bytes(tok.to_bytes()).encode_src(es) == tok.encode_src(es)


def test_sample_size_bounds_sentences_and_bytes(corpus):
    files, lines = list(corpus), 2 * N_LINES
    mb = sum(p.stat().st_size for p in files) / 1e6

    def size(**settings: float) -> int:
        return sample_size(TokenizerConfig(**settings), files, lines)  # type: ignore[arg-type]

    assert size() == lines  # under both bounds: every line
    assert size(input_sentence_size=123) == 123
    assert size(input_sample_mb=0, input_sentence_size=7) == 7
    quarter = size(input_sample_mb=mb / 4)
    assert abs(quarter - lines / 4) <= 1  # a quarter of the bytes: a quarter of the lines
    assert size(input_sample_mb=mb / 4, input_sentence_size=50) == 50  # the smaller wins
    assert size(input_sample_mb=mb / 4, input_sentence_size=0) == quarter


def test_sampled_lines_are_a_seeded_uniform_sample_in_file_order(corpus):
    files, lines = list(corpus), 2 * N_LINES
    every = [line for path in files for line in split_lines(path.read_text("utf-8"))]
    assert list(sampled_lines(files, lines, lines, seed=1)) == every
    picked = list(sampled_lines(files, lines, 300, seed=1))
    assert len(picked) == 300 and picked == list(sampled_lines(files, lines, 300, seed=1))
    assert picked != list(sampled_lines(files, lines, 300, seed=2))
    order, i = [], 0  # picked is a subsequence of every: file order
    for line in picked:
        i = every.index(line, i) + 1
        order.append(i - 1)
    assert min(order) < lines / 4 and max(order) > 3 * lines / 4  # from both files


def test_byte_budget_is_the_sample_sentencepiece_trains_on(corpus, tmp_path):
    """A budget of a quarter of the text trains the model a quarter of the lines trains; the
    sample, and so the model, is the same in another process."""
    mb = sum(p.stat().st_size for p in corpus) / 1e6
    cfg = TokenizerConfig(vocab_size=VOCAB, input_sample_mb=mb / 4)
    by_bytes = Tokenizer.train(cfg, [corpus[0]], [corpus[1]], tmp_path / "a")
    quarter = sample_size(cfg, list(corpus), 2 * N_LINES)
    cfg = TokenizerConfig(vocab_size=VOCAB, input_sample_mb=0, input_sentence_size=quarter)
    by_count = Tokenizer.train(cfg, [corpus[0]], [corpus[1]], tmp_path / "b")
    whole = Tokenizer.train(TokenizerConfig(vocab_size=VOCAB), [corpus[0]], [corpus[1]], tmp_path)
    assert by_bytes.fingerprint() == by_count.fingerprint() != whole.fingerprint()
    script = (
        "import sys; from pathlib import Path; from nmt.config import TokenizerConfig; "
        "from nmt.tokenizer import Tokenizer; "
        f"cfg = TokenizerConfig(vocab_size={VOCAB}, input_sample_mb={mb / 4!r}); "
        "print(Tokenizer.train(cfg, [Path(sys.argv[1])], [Path(sys.argv[2])], "
        "Path(sys.argv[3])).fingerprint())"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(corpus[0]), str(corpus[1]), str(tmp_path / "c")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert res.stdout.strip() == by_bytes.fingerprint()
