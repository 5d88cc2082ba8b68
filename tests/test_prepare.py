"""prepare(): SentencePiece + encoded, filtered, cached splits on a slice of the shipped
demo.es-en corpus; cache reuse and invalidation; bad input; the `python -m nmt.prepare` CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from nmt import cache as cache_mod
from nmt import tokenizer as tokenizer_mod
from nmt.config import DataConfig, TokenizerConfig
from nmt.data import DataError, prepare, read_parallel, remove_stale
from nmt.dataset import Prepared
from nmt.tokenizer import Tokenizer, sample_size, split_lines

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.es-en"
SIZES = {"train": 500, "dev": 60, "test": 60}
TOK = TokenizerConfig(vocab_size=300, target_vocab="used")  # the mapped target ids


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
    # target_vocab=used: the target pieces of the kept train pairs (tests/test_vocab.py)
    assert summary["vocab_size"] == {"src": 300, "tgt": tok.tgt_vocab_size}
    assert tok.tgt_vocab is not None and tok.tgt_vocab_size < 300
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
    assert prep.dataset("train").src_lengths.dtype == np.uint16  # 2 bytes a pair


def test_tokenizer_round_trip_on_prepared_data(prepared):
    prep, _ = prepared
    tok = prep.tokenizer
    es, en = prep.raw("train")
    ds = prep.dataset("train")
    assert tok.decode_tgt([ds[i][1].tolist() for i in range(len(ds))]) == en
    # joint model: its SentencePiece ids decode the source too (target ids are model ids)
    assert tok.spm_only().decode_tgt(tok.encode_src(es)) == es


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
    assert sorted(p.name for p in cache.iterdir() if p.name != cache_mod.DIGESTS) == sorted(
        p.name for p in (first.path, other_vocab.path, changed.path)
    )  # complete caches only, no temporary directories left behind


def prepare_logged(corpus: Path, cache: Path, caplog) -> tuple[Prepared, bool]:
    """prepare(), and whether it skipped reading the text (the files' digests from their stat)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nmt.cache"):
        prep = prepare(config(corpus, cache), TOK)
    return prep, "validate: skipped" in caplog.text


def test_cache_hit_from_stat_without_reading_the_text(tmp_path, monkeypatch, caplog):
    """Unchanged files hit the cache without being read again; a touched identical file is
    re-hashed and hits; an edit of the same size misses, with a new modification time and
    also with the old one set back (the change time differs)."""
    monkeypatch.setattr(cache_mod, "RACY_NS", 200_000_000)  # the tests' own 0.2 s margin
    corpus = make_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    time.sleep(0.3)  # older than the margin: the digests are recorded
    first, skipped = prepare_logged(corpus, cache, caplog)
    assert not first.reused and not skipped
    assert len(cache_mod.read_digests(cache)) == 3  # train, dev, test

    again, skipped = prepare_logged(corpus, cache, caplog)
    assert again.reused and skipped and again.path == first.path
    assert again.summary == first.summary

    os.utime(corpus / "train.es")  # touched, identical: re-hashed, hits
    touched, skipped = prepare_logged(corpus, cache, caplog)
    assert touched.reused and not skipped and touched.path == first.path
    time.sleep(0.3)  # the touch is older than the margin now: recorded on the next read
    assert prepare_logged(corpus, cache, caplog)[0].reused
    assert prepare_logged(corpus, cache, caplog)[1]

    def edit(path: Path, keep_mtime: bool) -> None:
        st = path.stat()
        lines = split_lines(path.read_text("utf-8"))
        lines[1] = lines[1].swapcase()  # same size, new content
        write_lines(path, lines)
        assert path.stat().st_size == st.st_size
        if keep_mtime:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert path.stat().st_mtime_ns == st.st_mtime_ns

    edit(corpus / "test.en", keep_mtime=False)
    edited, skipped = prepare_logged(corpus, cache, caplog)
    assert not edited.reused and not skipped and edited.path != first.path
    time.sleep(0.3)  # the edit is older than the margin: re-hashed and recorded, then a hit
    assert not prepare_logged(corpus, cache, caplog)[1]
    assert prepare_logged(corpus, cache, caplog)[1]

    edit(corpus / "dev.es", keep_mtime=True)
    set_back, skipped = prepare_logged(corpus, cache, caplog)
    assert not set_back.reused and not skipped
    assert set_back.path not in (first.path, edited.path)


def test_recently_changed_files_are_not_recorded(tmp_path, caplog):
    """Files changed within RACY_NS (2 s) of being read get no record: re-hashed next time."""
    corpus = make_corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    prepare_logged(corpus, cache, caplog)
    for split in SIZES:  # just changed (the content is the same)
        os.utime(corpus / f"{split}.es")
    again, skipped = prepare_logged(corpus, cache, caplog)
    assert again.reused and not skipped
    third, skipped = prepare_logged(corpus, cache, caplog)
    assert third.reused and not skipped and third.path == again.path


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


# ---------------------------------------------------------------------------------------------
# streaming, parallel build against an in-memory reference


def reference_cache(corpus: Path, tok: Tokenizer, max_len: int, max_ratio: float, out: Path):
    """What prepare wrote before it streamed: whole files read, every split encoded at once,
    filtered, saved with np.save. Kept here only as the reference for the streaming build."""
    out.mkdir()
    for split in ("train", "dev", "test"):
        es = split_lines((corpus / f"{split}.es").read_bytes().decode("utf-8"))
        en = split_lines((corpus / f"{split}.en").read_bytes().decode("utf-8"))
        sides = {"src": (es, tok.encode_src(es)), "tgt": (en, tok.encode_tgt(en))}
        sl = np.array([len(x) for x in sides["src"][1]], dtype=np.int64)
        tl = np.array([len(x) for x in sides["tgt"][1]], dtype=np.int64)
        keep = np.ones(len(es), dtype=bool)
        if split == "train":
            longer, shorter = np.maximum(sl, tl), np.minimum(sl, tl)
            keep = (shorter > 0) & (longer <= max_len) & (longer <= max_ratio * shorter)
        for side, (lines, ids) in sides.items():
            kept = [i for i, k in enumerate(keep) if k]
            lengths = np.array([len(ids[i]) for i in kept], dtype=np.int64)
            flat = [x for i in kept for x in ids[i]]
            np.save(out / f"{split}.{side}.ids.npy", np.array(flat, dtype=np.uint16))
            np.save(out / f"{split}.{side}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
            text = "".join(lines[i] + "\n" for i in kept)
            (out / f"{split}.{side}.txt").write_bytes(text.encode("utf-8"))


def test_chunked_parallel_cache_is_byte_identical_to_reference(tmp_path, caplog):
    corpus = make_corpus(tmp_path / "corpus", NOISY_TRAIN, dev_extra=[("", "Empty in dev.")])
    # a BOM and CRLF endings must come out as the whole-file reading had them
    raw = (corpus / "train.es").read_bytes().replace(b"\n", b"\r\n")
    (corpus / "train.es").write_bytes(b"\xef\xbb\xbf" + raw)
    built = {}
    caplog.set_level(logging.INFO, logger="nmt.cache")
    for workers, chunk in ((2, 37), (1, 100_000)):
        cfg = config(corpus, tmp_path / f"cache{workers}", max_len=60)
        cfg.num_workers = workers
        built[workers] = prepare(cfg, TOK, chunk_lines=chunk)
    one, two = built[1], built[2]
    assert one.path.name == two.path.name  # the key does not depend on workers or chunks
    assert two.summary["splits"]["train"]["read"] == SIZES["train"] + len(NOISY_TRAIN)
    ref = tmp_path / "reference"
    reference_cache(corpus, two.tokenizer, 60, DataConfig.max_ratio, ref)
    names = sorted(p.name for p in ref.iterdir())
    assert len(names) == 18
    for name in names:
        assert (two.path / name).read_bytes() == (ref / name).read_bytes(), name
        assert (one.path / name).read_bytes() == (ref / name).read_bytes(), name
    assert (one.path / "spm.model").read_bytes() == (two.path / "spm.model").read_bytes()
    assert (one.path / "tgt_vocab.npy").read_bytes() == (two.path / "tgt_vocab.npy").read_bytes()
    assert sorted(p.name for p in two.path.iterdir()) == sorted(
        names + ["spm.model", "summary.json", "tgt_vocab.npy"]
    )  # no shards left
    strip = {"path", "time_s"}
    assert {k: v for k, v in one.summary.items() if k not in strip} == {
        k: v for k, v in two.summary.items() if k not in strip
    }
    assert set(two.summary["time_s"]) == {"validate", "spm_train", "encode", "total"}
    logged = caplog.text
    assert "validate:" in logged and "spm_train:" in logged and "encode:" in logged


@pytest.mark.parametrize("child", [False, True])
def test_sentencepiece_sample_bounded_in_bytes(tmp_path, caplog, monkeypatch, child):
    """A train text over ``input_sample_mb``: SentencePiece trains on that budget's share of
    the lines (said in the log), the model a sentence count of that share gives; a bound that
    does not bind leaves the cache key alone. ``child``: SentencePiece in a child process, as
    for big corpora."""
    if child:
        monkeypatch.setattr(cache_mod, "SMALL_BYTES", 0)
    corpus = make_corpus(tmp_path / "corpus")
    train = [corpus / "train.es", corpus / "train.en"]
    mb = sum(p.stat().st_size for p in train) / 1e6
    tok = TokenizerConfig(vocab_size=300, input_sample_mb=mb / 3)
    lines = 2 * SIZES["train"]
    n = sample_size(tok, train, lines)
    assert abs(n - lines / 3) <= 1
    cfg = config(corpus, tmp_path / "cache")
    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="nmt.cache"):
        if not child:  # the lines validation counted are used: the text is not read to count
            m.setattr(tokenizer_mod, "scan_file", None)
        prep = prepare(cfg, tok)
    assert f"a sample of {n} of {lines} sentences" in caplog.text
    by_count = TokenizerConfig(vocab_size=300, input_sample_mb=0, input_sentence_size=n)
    ref = Tokenizer.train(by_count, [train[0]], [train[1]], tmp_path / "ref")
    assert prep.tokenizer.fingerprint() == ref.fingerprint()
    unbounded = [prepare(cfg, TokenizerConfig(vocab_size=300, input_sample_mb=m)) for m in (0, mb)]
    assert unbounded[0].path == unbounded[1].path != prep.path
    assert unbounded[1].reused


# ---------------------------------------------------------------------------------------------
# splits by key (issue 13): data.dev / data.test name files, Prepared takes keys only


def test_splits_are_addressed_by_key_not_file_stem(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    extra = [f"Línea {i}." for i in range(7)], [f"Line {i}." for i in range(7)]
    write_lines(corpus / "other.es", extra[0])
    write_lines(corpus / "other.en", extra[1])
    cfg = config(corpus, tmp_path / "cache")
    cfg.dev, cfg.test = "test", "other"
    prep = prepare(cfg, TOK)
    assert prep.raw("dev") == (demo_lines("test", "es"), demo_lines("test", "en"))
    assert prep.raw("test") == extra
    assert len(prep.dataset("test")) == 7
    for stem in ("other", "valid"):  # file stems are not split keys
        with pytest.raises(ValueError, match="unknown split"):
            prep.raw(stem)
        with pytest.raises(ValueError, match="unknown split"):
            prep.dataset(stem)

    # the same content under other file names: a cache hit that reports the new names
    for lang in ("es", "en"):
        (corpus / f"other.{lang}").rename(corpus / f"final.{lang}")
    cfg.test = "final"
    again = prepare(cfg, TOK)
    assert again.reused and again.path == prep.path
    assert again.summary["split_names"] == {"train": "train", "dev": "test", "test": "final"}
    assert again.summary["files"]["test"] == [str(corpus / "final.es"), str(corpus / "final.en")]
    assert again.raw("test") == extra


# ---------------------------------------------------------------------------------------------
# interrupted prepares (issue 13): nothing partial, temporary directories cleaned


def test_remove_stale_only_removes_dead_prepares_of_this_host(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host, key = cache_mod._host(), "0123456789abcdef0123"
        names = {
            "dead": f".tmp-{key}-{host}-{dead.pid}-abcd_123",
            "live": f".tmp-{key}-{host}-{live.pid}-abcd_123",
            "other_host": f".tmp-{key}-elsewhere.example-{dead.pid}-abcd_123",
            "old_style": f".tmp-{key}-abcd_123",
            "foreign": ".tmp-mine",
        }
        for name in names.values():
            (cache / name).mkdir()
            (cache / name / "spm.model").write_bytes(b"x")
        (cache / f".tmp-{key}-{host}-{dead.pid}-file0000").write_text("a file, not ours")
        removed = remove_stale(cache)
    finally:
        live.kill()
        live.wait()
    assert removed == [cache / names["dead"]]
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted(
        [n for k, n in names.items() if k != "dead"] + [f".tmp-{key}-{host}-{dead.pid}-file0000"]
    )


KILL_SCRIPT = """
import sys
from nmt.cache import prepare  # no torch import: a quicker start
from nmt.config import DataConfig, TokenizerConfig
cfg = DataConfig(dir=sys.argv[1], src="es", tgt="en", cache_dir=sys.argv[2], num_workers=2)
TOK = TokenizerConfig(vocab_size=300, input_sentence_size=2000)  # a quick SentencePiece
prepare(cfg, TOK, chunk_lines=20)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_prepare_leaves_no_partial_cache(tmp_path, sig):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 5000), ("dev", 200), ("test", 200)):
        for lang in ("es", "en"):
            lines = split_lines((DEMO / f"{split}.{lang}").read_text("utf-8"))[:n]
            write_lines(corpus / f"{split}.{lang}", lines)
    cache = tmp_path / "cache"
    # the signal is sent mid-way through encoding; should the build win that race (a loaded
    # machine), the same signal comes from the fault point before the final rename
    fault = f"prepare:1:{sig.name.removeprefix('SIG')}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(corpus), str(cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NMT_FAULT": fault},
    )
    deadline = time.monotonic() + 60
    while not any(cache.glob(".tmp-*/shards/train.*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "prepare did not start encoding"
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    finals = [p for p in cache.iterdir() if not p.name.startswith(".tmp-")]
    assert not any((p / "summary.json").exists() for p in finals)  # no complete cache
    if sig == signal.SIGINT:
        assert list(cache.iterdir()) == []  # cleaned up on the way out
    else:
        [left] = cache.iterdir()  # a kill -9 cannot clean; the next prepare does
        assert left.name.startswith(".tmp-") and str(proc.pid) in left.name
    cfg = DataConfig(dir=str(corpus), src="es", tgt="en", cache_dir=str(cache), num_workers=1)
    prep = prepare(cfg, TokenizerConfig(vocab_size=300, input_sentence_size=2000))
    assert [p.name for p in cache.iterdir() if p.name != cache_mod.DIGESTS] == [prep.path.name]
    assert prep.summary["splits"]["train"]["read"] == 5000


def test_prepare_entry_point_does_not_import_torch():
    """torch costs ~200 MB in prepare's parent process, which holds it for the whole build."""
    code = "import sys, nmt.prepare; sys.exit('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0
