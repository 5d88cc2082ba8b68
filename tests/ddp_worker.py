"""A few training updates built from the library's own pieces, one process per rank.

Run by torchrun from ``tests/test_distributed.py``::

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT UPDATES key=value ...

Each rank saves ``OUT/rank{r}.pt``: its parameters after UPDATES updates and the dataset
indices it trained on in each update, so the test can compare the ranks with each other and
with one process (``train_updates`` called directly) that sees the union of their batches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

import nmt.train  # noqa: F401  (registers train_schema)
from nmt import distributed as dist_utils
from nmt.batching import BucketBatchSampler
from nmt.compose import compose_train
from nmt.config import TrainConfig
from nmt.data import prepare
from nmt.loss import Criterion
from nmt.model import build_model
from nmt.optim import build_optimizer
from nmt.rng import seed_everything
from nmt.trainer import Step, train_update, update_groups


def train_updates(cfg: TrainConfig, n_updates: int) -> dict[str, Any]:
    """``n_updates`` updates in this process (a torchrun rank, or alone); returns
    {"rank", "params", "batches": [[dataset indices of one update], ...]}."""
    ctx = dist_utils.init(cfg.device, cfg.trainer.dist_timeout_s)
    tcfg = cfg.trainer
    seed_everything(tcfg.seed)
    with dist_utils.main_first(ctx):
        prepared = prepare(cfg.data, cfg.tokenizer)
    tok = prepared.tokenizer
    train_set = prepared.dataset("train")
    sampler = BucketBatchSampler(
        train_set.src_lengths,
        train_set.tgt_lengths,
        max_tokens=tcfg.max_tokens,
        seed=tcfg.seed,
        pool_factor=tcfg.pool_factor,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
    )
    sampler.set_epoch(0)
    model = build_model(cfg.model, tok.src_vocab_size, tok.tgt_vocab_size, tok.pad_id)
    criterion: torch.nn.Module = Criterion(model, cfg.optim.label_smoothing)
    if ctx.world_size > 1:
        criterion = DistributedDataParallel(criterion)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    step = Step(criterion, model, optimizer, None, ctx, ctx.device, "fp32", cfg.optim.clip_norm)
    batches: list[list[int]] = []
    groups = update_groups(sampler, train_set, tok.pad_id, tok.bos_id, tok.eos_id, tcfg.accum_steps)
    for group in groups:
        if len(batches) == n_updates:
            break
        stats = train_update(group, step)
        assert stats.finite
        batches.append(sorted(int(i) for b in group for i in b.index))
    assert len(batches) == n_updates, "the test wants more updates than one epoch holds"
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dist_utils.cleanup(ctx)
    return {"rank": ctx.rank, "params": params, "batches": batches}


if __name__ == "__main__":
    out, n = Path(sys.argv[1]), int(sys.argv[2])
    result = train_updates(compose_train(sys.argv[3:]), n)
    torch.save(result, out / f"rank{result['rank']}.pt")
