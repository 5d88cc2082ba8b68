"""TensorBoard monitoring: scalars, hyperparameters, attention heatmaps and sample translations.

Tags are grouped: ``train/*``, ``valid/*``, ``test/*``. The writer exists only on rank 0 and
only when enabled; every method is then a cheap no-op.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nmt.config import TrainConfig

if TYPE_CHECKING:
    from nmt.data import Prepared
    from nmt.model import Seq2Seq

N_SAMPLES = 3


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.writer = None
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
        image = attention_image(model, prepared, res["srcs"][0], res["hyps"][0], device)
        if image is not None:
            self.writer.add_image("valid/attention", image, step, dataformats="HW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def attention_image(
    model: Seq2Seq, prepared: Prepared, src: str, hyp: str, device: torch.device
) -> torch.Tensor | None:
    """Attention weights (T, S) of the model's own translation, teacher-forced, in [0, 1]."""
    tok = prepared.tokenizer
    src_ids = tok.encode_src([src])[0] + [tok.eos_id]
    tgt_ids = [tok.bos_id] + tok.encode_tgt([hyp])[0]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        s = torch.tensor([src_ids], device=device)
        t = torch.tensor([tgt_ids], device=device)
        _, attn = model.forward_with_attention(s, torch.tensor([len(src_ids)]), t)  # (1, T, S)
    model.train(was_training)
    weights = attn[0].float().cpu()  # (T, S)
    # scale each pixel up so small sentences stay visible
    return weights.repeat_interleave(8, 0).repeat_interleave(8, 1)
