"""Attention returned with translations, Pharaoh alignments, and the TensorBoard heatmap."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.alignment import alignment_line, hard_alignment, pharaoh, to_words, word_positions
from nmt.config import ConfigError, DecodeConfig, TranslateConfig
from nmt.ensemble import Ensemble
from nmt.monitor import Monitor, render_attention, save_attention_png
from nmt.translate import run as translate_run
from nmt.translation import forced_attention, translate_lines, translate_with_attention

ROOT = Path(__file__).resolve().parents[1]
GREEDY = DecodeConfig(beam_size=1, max_len_a=1.0, max_len_b=3)
BEAM = DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=3)
BEAM5 = DecodeConfig(beam_size=5, max_len_b=3)  # nmt.translate's default beam, max_len_b=3


def test_hard_alignment_by_hand() -> None:
    # 3 output subwords + eos row, 3 source subwords + eos column
    att = np.array(
        [
            [0.1, 0.1, 0.7, 0.1],  # j=0 -> i=2
            [0.1, 0.1, 0.1, 0.7],  # j=1 -> source eos: unaligned
            [0.6, 0.2, 0.1, 0.1],  # j=2 -> i=0
            [0.0, 0.0, 0.0, 1.0],  # eos row: never aligned
        ]
    )
    assert hard_alignment(att, 3, 3) == [(2, 0), (0, 2)]
    assert pharaoh(hard_alignment(att, 3, 3)) == "0-2 2-0"
    # words: "▁un ▁gato s" = 2 words; "▁a ▁cat s" = 2 words
    src, tgt = ["▁un", "▁gato", "s"], ["▁the", "▁cat", "s"]
    assert word_positions(src) == [0, 1, 1]
    assert to_words([(2, 0), (1, 1), (2, 2)], src, tgt) == [(1, 0), (1, 1)]
    assert alignment_line(att, src, tgt, "subword") == "0-2 2-0"
    assert alignment_line(att, src, tgt, "word") == "0-1 1-0"
    with pytest.raises(ValueError, match="alignment_unit"):
        alignment_line(att, src, tgt, "char")


def test_word_positions_are_whitespace_words(tiny_ckpt) -> None:
    lines = (ROOT / "data/demo.es-en/dev.es").read_text(encoding="utf-8").splitlines()[:100]
    for line in lines:
        positions = word_positions(tiny_ckpt.tokenizer.src_pieces(line))
        assert positions[-1] + 1 == len(line.split()), line


def test_forced_attention_is_the_models_own(tiny_ckpt) -> None:
    tok, model = tiny_ckpt.tokenizer, tiny_ckpt.model
    src = tok.encode_src(["Y dijo Dios: Sea la luz.", "Amén."])
    tgt = [[5, 9, 12, 40], [7]]
    got = forced_attention(model, src, tgt, "cpu", tok.pad_id, tok.bos_id, tok.eos_id)
    for s, t, a in zip(src, tgt, got, strict=True):
        assert a.shape == (len(t) + 1, len(s) + 1)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
        with torch.inference_mode():
            _, want = model.forward_with_attention(
                torch.tensor([s + [tok.eos_id]]),
                torch.tensor([len(s) + 1]),
                torch.tensor([[tok.bos_id] + t]),
            )
        np.testing.assert_allclose(a, want[0].numpy(), atol=1e-5)
    # an ensemble of one gives the same weights
    ens = forced_attention(Ensemble([model]), src, tgt, "cpu", tok.pad_id, tok.bos_id, tok.eos_id)
    for a, b in zip(got, ens, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_translate_with_attention(tiny_ckpt) -> None:
    tok, model = tiny_ckpt.tokenizer, tiny_ckpt.model
    lines = ["Y dijo Dios: Sea la luz.", "", "Amén."]
    out = translate_with_attention(model, tok, lines, BEAM, "cpu")
    best = translate_lines(model, tok, lines, BEAM, "cpu")
    texts = tok.decode_tgt([h[0].tokens for h in best])
    assert [t.text for t in out] == [texts[0], "", texts[2]]
    assert out[1].attention.shape == (0, 0) and out[1].tgt_pieces == []
    for t, h in zip((out[0], out[2]), (best[0][0], best[2][0]), strict=True):
        assert t.tgt_pieces == tok.tgt_pieces(h.tokens) and t.score == pytest.approx(h.score)
        assert t.attention.shape == (len(t.tgt_pieces) + 1, len(t.src_pieces) + 1)


def test_alignment_output_cli(tiny_ckpt, tmp_path: Path) -> None:
    """README: ``nmt.translate ... alignment_output=my.align``, as a user runs it (with a
    comma-joined ensemble, as the README's ensemble command: the same model twice)."""
    ckpt = tiny_ckpt.path
    src_lines = ["Y dijo Dios: Sea la luz.", "", "Y fue la tarde y la mañana el día primero."]
    src = tmp_path / "my.es"
    src.write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    out, align = tmp_path / "my.en", tmp_path / "my.align"
    r = subprocess.run(
        [sys.executable, "-m", "nmt.translate", f"ckpt={ckpt},{ckpt}", f"input={src}"]
        + [f"output={out}", f"alignment_output={align}", "device=cpu", "decode.max_len_b=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    hyps = out.read_text(encoding="utf-8").splitlines()
    rows = align.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(rows) == len(src_lines) == len(hyps) and rows[1] == ""
    texts = [
        t.text
        for t in translate_with_attention(
            tiny_ckpt.model, tiny_ckpt.tokenizer, src_lines, BEAM5, "cpu"
        )
    ]
    assert hyps == texts
    for line, hyp, row in zip(src_lines, hyps, rows, strict=True):
        for link in row.split():
            assert re.fullmatch(r"\d+-\d+", link), row
            i, j = map(int, link.split("-"))
            assert i < len(line.split()) and j < len(hyp.split()), (link, line, hyp)


def test_subword_alignments_and_bad_unit(tiny_ckpt, tmp_path: Path) -> None:
    src_lines = ["Y dijo Dios: Sea la luz.", "Amén."]
    src = tmp_path / "my.es"
    src.write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    cfg = TranslateConfig(
        ckpt=str(tiny_ckpt.path),
        input=str(src),
        output=str(tmp_path / "my.en"),
        alignment_output=str(tmp_path / "my.align"),
        alignment_unit="subword",
        decode=GREEDY,
        device="cpu",
        progress=False,
    )
    translate_run(cfg)
    tok, model = tiny_ckpt.tokenizer, tiny_ckpt.model
    items = translate_with_attention(model, tok, src_lines, GREEDY, "cpu")
    rows = (tmp_path / "my.align").read_text(encoding="utf-8").splitlines()
    for t, row in zip(items, rows, strict=True):
        want = hard_alignment(t.attention, len(t.src_pieces), len(t.tgt_pieces))
        assert row == pharaoh(want)
    with pytest.raises(ConfigError, match=r"alignment_unit=char: unknown value"):
        replace(cfg, alignment_unit="char")


def test_heatmap_png_is_readable(tiny_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    tok, model = tiny_ckpt.tokenizer, tiny_ckpt.model
    lines = ["Y dijo Dios: Sea la luz.", "Amén."]
    items = translate_with_attention(model, tok, lines, GREEDY, "cpu")
    image = render_attention(items)
    assert image is not None and image.dtype == np.uint8 and image.shape[2] == 3
    # about 0.3 inch (30 px) per subword: labels have room
    assert image.shape[1] >= 30 * items[0].attention.shape[1]
    assert image.shape[0] >= 30 * sum(t.attention.shape[0] for t in items)
    path = tmp_path / "attention.png"
    assert save_attention_png(items, path)
    png = imread(str(path))
    assert png.shape[:2] == image.shape[:2]
    assert png.std() > 0.05  # not a blank picture


def test_monitor_writes_heatmap_to_tensorboard(tiny_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = Monitor(tmp_path, enabled=True)
    srcs = ["Y dijo Dios: Sea la luz.", "Amén.", "Y fue así."]
    monitor.attention(tiny_ckpt.model, tiny_ckpt.tokenizer, srcs, "cpu", step=7)
    monitor.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("valid/attention")
    assert event.step == 7 and event.width >= 500 and event.height >= 500


def test_heatmap_without_matplotlib_falls_back(
    tiny_ckpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    monitor = Monitor(tmp_path, enabled=True)
    for step in (1, 2):
        monitor.attention(tiny_ckpt.model, tiny_ckpt.tokenizer, ["Amén y amén."], "cpu", step)
    monitor.close()
    warnings = [r for r in caplog.records if "matplotlib is not installed" in r.message]
    assert len(warnings) == 1  # said once, not at every validation
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("valid/attention")] == [1, 2]
