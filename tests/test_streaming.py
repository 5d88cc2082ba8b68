"""Streaming nmt.translate: an interactive producer gets each line's translation before it sends
the next; chunked translation writes exactly what whole-file translation writes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nmt import Translator
from nmt.config import TranslateConfig
from nmt.translate import InputError, chunks, count_lines, run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import tiny_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model() -> tuple[Path, list[str]]:
    ckpt, corpus = tiny_checkpoint()
    return ckpt, (corpus / "test.es").read_text(encoding="utf-8").splitlines()


def test_interactive_producer_gets_each_line_before_sending_the_next(
    model: tuple[Path, list[str]],
) -> None:
    ckpt, lines = model
    text = [lines[0], "", lines[1], lines[2]]
    want = Translator.load(ckpt, device="cpu", beam_size=2).translate(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt.translate", f"ckpt={ckpt}", "device=cpu"]
        + ["decode.beam_size=2"],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [answers.put(x) for x in proc.stdout], daemon=True)
    reader.start()
    try:
        for line, expected in zip(text, want, strict=True):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()  # and nothing more is sent until the answer is back
            answer = answers.get(timeout=120)
            assert answer.decode() == expected + "\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert answers.empty()


def test_chunked_output_is_byte_identical(model: tuple[Path, list[str]], tmp_path: Path) -> None:
    ckpt, lines = model
    # a BOM, CRLF line ends, empty and blank lines, no newline at the end
    text = "\ufeff" + "\r\n".join(lines[:5]) + "\n\n  \n" + "\n".join(lines[5:12])
    src = tmp_path / "in.es"
    src.write_text(text, encoding="utf-8")
    outputs = []
    for size in (10_000, 3, 1):
        out, nbest = tmp_path / f"out{size}", tmp_path / f"nbest{size}"
        run(
            TranslateConfig(
                ckpt=str(ckpt),
                input=str(src),
                output=str(out),
                nbest_output=str(nbest),
                device="cpu",
                chunk_lines=size,
                progress=False,
            )
        )
        outputs.append((out.read_bytes(), nbest.read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]
    want = Translator.load(ckpt, device="cpu").translate(
        lines[:5] + ["", "  "] + lines[5:12]
    )  # the same as the whole file at once (what nmt.translate wrote before streaming)
    assert outputs[0][0].decode() == "".join(t + "\n" for t in want)
    assert outputs[0][0].decode().splitlines()[5:7] == ["", ""]
    rows = outputs[0][1].decode().splitlines()
    assert rows[0].startswith("0 ||| ") and rows[-1].startswith(f"{len(want) - 1} ||| ")


def test_file_chunks_are_full_and_bounded(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_text("".join(f"line {i}\n" for i in range(25)), encoding="utf-8")
    assert count_lines(str(src)) == 25
    got = list(chunks(str(src), 10, interactive=False))
    assert [len(c) for c in got] == [10, 10, 5]
    assert got[2][-1] == "line 24"


def test_bad_utf8_names_the_line_before_any_output(
    model: tuple[Path, list[str]], tmp_path: Path
) -> None:
    src = tmp_path / "bad"
    src.write_bytes(b"hola\nmundo \xff\n")
    with pytest.raises(InputError, match=r"bad:2: not valid UTF-8 \(byte 7\)"):
        count_lines(str(src))
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "nmt.translate", f"ckpt={model[0]}", f"input={src}"]
        + [f"output={out}", "device=cpu"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"error: {src}:2: not valid UTF-8 (byte 7)"
    assert not out.exists()
