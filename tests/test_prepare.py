"""prepare(): SentencePiece + encoded, filtered, cached splits on a slice of the shipped
demo.es-en corpus; cache reuse and invalidation; bad input; the `python -m nmt.prepare` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from nmt.config import DataConfig, TokenizerConfig
from nmt.data import DataError, prepare, read_parallel
from nmt.tokenizer import split_lines

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.es-en"
SIZES = {"train": 500, "dev": 60, "test": 60}
TOK = TokenizerConfig(vocab_size=300)


def demo_lines(split: str, lang: str) -> list[str]:
    return split_lines((DEMO / f"{split}.{lang}").read_text("utf-8"))[: SIZES[split]]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_corpus(
    d: Path,
    extra_train: Sequence[tuple[str, str]] = (),
    dev_extra: Sequence[tuple[str, str]] = (),
) -> Path:
    """demo.es-en slices in `d`, with extra pairs appended to train / dev."""
    d.mkdir(parents=True, exist_ok=True)
    for split in SIZES:
        es, en = demo_lines(split, "es"), demo_lines(split, "en")
        extra = extra_train if split == "train" else dev_extra if split == "dev" else ()
        write_lines(d / f"{split}.es", es + [s for s, _ in extra])
        write_lines(d / f"{split}.en", en + [t for _, t in extra])
    return d


def config(
    corpus: Path,
    cache: Path,
    max_len: int = DataConfig.max_len,
    max_ratio: float = DataConfig.max_ratio,
    num_threads: int = DataConfig.num_threads,
) -> DataConfig:
    return DataConfig(
        dir=str(corpus),
        src="es",
        tgt="en",
        cache_dir=str(cache),
        max_len=max_len,
        max_ratio=max_ratio,
        num_threads=num_threads,
    )


LONG = " ".join(["y la tierra estaba desordenada y vacía"] * 12)
NOISY_TRAIN = [
    ("", "An empty source line."),
    ("Una línea sin traducción.", "   "),
    (LONG, LONG),  # over max_len on both sides
    ("Sí.", "Yes, and the darkness was upon the face of the deep, and the spirit moved."),
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    corpus = make_corpus(d / "corpus", NOISY_TRAIN, dev_extra=[("", "Empty source in dev.")])
    cfg = config(corpus, d / "cache", max_len=60, max_ratio=3.0)
    return prepare(cfg, TOK), cfg


def test_summary_and_filtering_against_reference(prepared):
    prep, cfg = prepared
    tok = prep.tokenizer
    summary = json.loads((prep.path / "summary.json").read_text())
    assert summary == prep.summary
    assert summary["path"] == str(prep.path) and prep.path.parent == Path(cfg.cache_dir)
    assert summary["vocab_size"] == {"src": 300, "tgt": 300}
    assert summary["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert not prep.reused

    # reference filter on the tokenizer's own lengths
    es = demo_lines("train", "es") + [s for s, _ in NOISY_TRAIN]
    en = demo_lines("train", "en") + [t for _, t in NOISY_TRAIN]
    sl = np.array([len(x) for x in tok.encode_src(es)])
    tl = np.array([len(x) for x in tok.encode_tgt(en)])
    empty = (sl == 0) | (tl == 0)
    long = ~empty & (np.maximum(sl, tl) > 60)
    ratio = ~empty & ~long & (np.maximum(sl, tl) > 3.0 * np.minimum(sl, tl))
    keep = ~(empty | long | ratio)
    train = summary["splits"]["train"]
    assert train["read"] == len(es)
    assert train["kept"] == int(keep.sum())
    assert train["dropped"] == {
        "empty": int(empty.sum()),
        "too_long": int(long.sum()),
        "ratio": int(ratio.sum()),
    }
    assert train["dropped"]["empty"] >= 2 and train["dropped"]["too_long"] >= 1
    assert train["dropped"]["ratio"] >= 1

    ds = prep.dataset("train")
    raw_es, raw_en = prep.raw("train")
    assert raw_es == [x for x, k in zip(es, keep, strict=True) if k]
    assert raw_en == [x for x, k in zip(en, keep, strict=True) if k]
    assert ds.src_lengths.tolist() == sl[keep].tolist()
    assert ds.tgt_lengths.tolist() == tl[keep].tolist()
    for i in (0, 7, len(ds) - 1):
        src_ids, tgt_ids = ds[i]
        assert src_ids.tolist() == tok.encode_src([raw_es[i]])[0]
        assert tgt_ids.tolist() == tok.encode_tgt([raw_en[i]])[0]


def test_dev_is_not_filtered(prepared):
    prep, _ = prepared
    raw_es, raw_en = prep.raw("dev")
    assert raw_es == demo_lines("dev", "es") + [""]
    assert raw_en == demo_lines("dev", "en") + ["Empty source in dev."]
    ds = prep.dataset("dev")
    assert len(ds) == SIZES["dev"] + 1 and ds.src_lengths[-1] == 0
    assert prep.summary["splits"]["dev"]["kept"] == SIZES["dev"] + 1
    assert prep.raw("test") == (demo_lines("test", "es"), demo_lines("test", "en"))


def test_cached_arrays_are_compact_and_memory_mapped(prepared):
    prep, _ = prepared
    ids = np.load(prep.path / "train.src.ids.npy", mmap_mode="r")
    offsets = np.load(prep.path / "train.src.offsets.npy", mmap_mode="r")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(ids)
    assert prep.dataset("train").src_lengths.dtype == np.int64


def test_tokenizer_round_trip_on_prepared_data(prepared):
    prep, _ = prepared
    tok = prep.tokenizer
    es, en = prep.raw("train")
    ds = prep.dataset("train")
    assert tok.decode_tgt([ds[i][1].tolist() for i in range(len(ds))]) == en
    assert tok.decode_tgt(tok.encode_src(es)) == es  # joint model: decodes source too


def test_cache_reused_and_invalidated(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    first = prepare(config(corpus, cache), TOK)
    model = first.path / "spm.model"
    stamp = model.stat().st_mtime_ns

    again = prepare(config(corpus, cache, num_threads=1), TOK)  # threads: not part of the key
    assert again.reused and again.path == first.path
    assert model.stat().st_mtime_ns == stamp  # SentencePiece was not retrained
    assert again.summary == first.summary
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()

    other_vocab = prepare(config(corpus, cache), TokenizerConfig(vocab_size=280))
    assert not other_vocab.reused and other_vocab.path != first.path

    lines = split_lines((corpus / "test.en").read_text("utf-8"))
    lines[0] = lines[0].upper()  # same size, same line count, new content
    write_lines(corpus / "test.en", lines)
    changed = prepare(config(corpus, cache), TOK)
    assert not changed.reused and changed.path != first.path
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (first.path, other_vocab.path, changed.path)
    )  # complete caches only, no temporary directories left behind


def test_failed_build_leaves_no_cache(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="SentencePiece training failed"):
        prepare(config(corpus, cache), TokenizerConfig(vocab_size=50_000))
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("missing", r"dev\.en: no such file"),
        ("counts", r"line counts differ: .*train\.es has 501 lines, .*train\.en has 500"),
        ("utf8", r"test\.es: line 4: invalid UTF-8"),
        ("empty", r"dev\.es: empty split"),
        ("all_dropped", r"train\.es: no training pairs left after filtering"),
    ],
)
def test_bad_input(tmp_path, damage, expected):
    corpus = make_corpus(tmp_path / "corpus")
    if damage == "missing":
        (corpus / "dev.en").unlink()
    elif damage == "counts":
        with (corpus / "train.es").open("a", encoding="utf-8") as f:
            f.write("una línea de más\n")
    elif damage == "utf8":
        data = bytearray((corpus / "test.es").read_bytes())
        third_newline = [i for i, b in enumerate(data) if b == ord("\n")][2]
        data[third_newline + 2 : third_newline + 2] = b"\xc3\x28"  # invalid continuation byte
        (corpus / "test.es").write_bytes(bytes(data))
    elif damage == "empty":
        write_lines(corpus / "dev.es", [])
        write_lines(corpus / "dev.en", [])
    elif damage == "all_dropped":
        write_lines(corpus / "train.en", [""] * SIZES["train"])
    with pytest.raises(DataError, match=expected) as e:
        prepare(config(corpus, tmp_path / "cache"), TOK)
    assert "\n" not in str(e.value)


def test_cli_bad_input_one_line_exit_2(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / "train.en").unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmt.prepare",
            f"data.dir={corpus}",
            "data.src=es",
            "data.tgt=en",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {corpus / 'train.en'}: no such file"]
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # no outputs/, no logs


@pytest.mark.parametrize("name, src, tgt", [("demo.es-en", "es", "en"), ("lo.de-en", "de", "en")])
def test_shipped_corpora_are_aligned(name, src, tgt):
    d = ROOT / "data" / name
    for split in ("train", "dev", "test"):
        src_lines, tgt_lines = read_parallel(d / f"{split}.{src}", d / f"{split}.{tgt}")
        assert len(src_lines) == len(tgt_lines) > 0
    if name == "lo.de-en":
        assert "https://mozilla.org/MPL/2.0/" in (d / "LICENSE-MPL-2.0").read_text()
