"""TensorBoard monitoring: scalars, hyperparameters, attention heatmaps and sample translations.

Tags are grouped: ``train/*``, ``valid/*``, ``test/*``. The writer exists only on rank 0 and
only when enabled; every method is then a cheap no-op.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nmt.config import TrainConfig

if TYPE_CHECKING:
    from nmt.data import Prepared
    from nmt.model import Seq2Seq
    from nmt.tokenizer import Tokenizer
    from nmt.translation import Translation

N_SAMPLES = 3
N_HEATMAPS = 3  # dev sentences drawn at each validation
HEATMAP_MAX_PIECES = 30  # longer sentences are skipped (labels would not fit)
log = logging.getLogger(__name__)


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.writer = None
        self._warned = False
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, cfg: TrainConfig) -> None:
        """The run's whole config as text, and the flat hyperparameters in the HPARAMS tab."""
        if self.writer is None:
            return
        self.writer.add_text("config", "```\n" + json.dumps(asdict(cfg), indent=2) + "\n```", 0)
        flat: dict[str, Any] = {}
        for group in ("model", "optim", "trainer", "tokenizer"):
            for k, v in asdict(getattr(cfg, group)).items():
                flat[f"{group}.{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
        # write into this run's own event file (SummaryWriter.add_hparams would open a sub-run)
        from torch.utils.tensorboard.summary import hparams

        exp, ssi, sei = hparams(flat, {"valid/bleu": 0.0})
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def validation(
        self,
        res: dict[str, Any],
        model: Seq2Seq,
        prepared: Prepared,
        device: torch.device,
        step: int,
    ) -> None:
        if self.writer is None:
            return
        self.scalars(
            {
                "valid/loss": res["loss"],
                "valid/ppl": res["ppl"],
                "valid/bleu": res["bleu"],
                "valid/chrf": res["chrf"],
            },
            step,
        )
        lines = []
        for src, hyp, ref in list(zip(res["srcs"], res["hyps"], res["refs"], strict=True))[
            :N_SAMPLES
        ]:
            lines.append(f"**src** {src}  \n**hyp** {hyp}  \n**ref** {ref}")
        self.writer.add_text("valid/samples", "\n\n".join(lines), step)
        self.attention(model, prepared.tokenizer, res["srcs"], device, step)
        self.writer.flush()

    def attention(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        srcs: list[str],
        device: torch.device | str,
        step: int,
    ) -> None:
        """``valid/attention``: heatmaps of the model's greedy translations of a few dev
        sentences, source subwords along the x axis and target subwords down the y axis."""
        if self.writer is None:
            return
        from nmt.config import DecodeConfig
        from nmt.translation import translate_with_attention

        picked = pick_sentences(srcs, tokenizer)
        if not picked:
            return
        items = translate_with_attention(
            model, tokenizer, picked, DecodeConfig(beam_size=1), device
        )
        image = render_attention(items)
        if image is not None:
            self.writer.add_image("valid/attention", image, step, dataformats="HWC")
        else:
            if not self._warned:
                log.warning(
                    "matplotlib is not installed: valid/attention is drawn without subword "
                    "labels (pip install 'nmt[plot]' for labelled heatmaps)"
                )
                self._warned = True
            self.writer.add_image("valid/attention", plain_image(items[0]), step, dataformats="HW")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def pick_sentences(srcs: list[str], tokenizer: Tokenizer) -> list[str]:
    """The first ``N_HEATMAPS`` dev sentences of 3 to ``HEATMAP_MAX_PIECES`` source subwords
    (the first ones, whatever their length, if too few are)."""
    fit: list[str] = []
    for s in srcs:  # stops at the first N_HEATMAPS that fit: dev sets can be long
        if 3 <= len(tokenizer.src_pieces(s)) <= HEATMAP_MAX_PIECES:
            fit.append(s)
            if len(fit) == N_HEATMAPS:
                break
    return fit or [s for s in srcs if s.strip()][:N_HEATMAPS]


def render_attention(
    items: list[Translation], dpi: int = 100, max_rows: int = 2 * HEATMAP_MAX_PIECES
) -> np.ndarray | None:
    """Labelled heatmaps (one panel per translation, stacked) as an (H, W, 3) uint8 image;
    None without matplotlib. Drawn with matplotlib's Agg canvas (no display, no global
    pyplot state); ~0.3 inch per subword so 9-point labels stay legible; at most
    ``max_rows`` output subwords per panel (an untrained model's runaway outputs are cut)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    items = [t for t in items if t.attention.size]
    if not items:
        return None
    cell = 0.3  # inches per subword
    shown = [min(t.attention.shape[0], max_rows) for t in items]  # output rows drawn
    cols = max(t.attention.shape[1] for t in items)
    heights = [n * cell + 1.6 for n in shown]
    fig = Figure(figsize=(max(cols * cell + 2.5, 5.0), sum(heights)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, t, n in zip(axes[:, 0], items, shown, strict=True):
        image = ax.imshow(t.attention[:n], cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
        src = [*t.src_pieces, "</s>"]
        tgt = [*t.tgt_pieces, "</s>"][:n]
        ax.set_xticks(range(len(src)), src, rotation=90, fontsize=9)
        ax.set_yticks(range(len(tgt)), tgt, fontsize=9)
        ax.tick_params(length=0)
        ax.xaxis.tick_top()
        ax.set_xlabel("source subwords", fontsize=9)
        rows = len(t.tgt_pieces) + 1
        more = f" (first {n} of {rows})" if n < rows else ""
        ax.set_ylabel(f"output subwords{more}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    return np.ascontiguousarray(rgba[..., :3])


def save_attention_png(items: list[Translation], path: str | Path) -> bool:
    """Write ``render_attention``'s picture as a PNG; False (nothing written) without matplotlib."""
    image = render_attention(items)
    if image is None:
        return False
    from matplotlib.image import imsave

    imsave(str(path), image)
    return True


def plain_image(item: Translation, scale: int = 8) -> torch.Tensor:
    """Fallback without matplotlib: the (T, S) weights as a grayscale image, each weight an
    8x8 pixel square, no labels."""
    weights = torch.from_numpy(item.attention).float()
    return weights.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
