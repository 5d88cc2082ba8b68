"""``python -m nmt.train key=value ...``: compose the Hydra config, train, report.

The only Hydra-aware part of training: compose, convert to the typed ``TrainConfig``, call
``nmt.trainer.train``. Bad input ends with a one-line ``error: ...`` and exit status 2; an
interrupted run exits with 128 + the signal number after saving ``last.pt``.

Under torchrun every rank runs this entry point and composes the same config. Only rank 0
keeps Hydra's output (``.hydra/``, ``train.log``) and prints the report; the other ranks write
nothing under the run directory, log warnings to stderr, and take rank 0's output directory
(with the default timestamped ``hydra.run.dir`` their own clocks could name another one).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nmt.cli import to_config, user_errors
from nmt.config import TrainConfig

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
log = logging.getLogger("nmt.train")


def report(results: dict, cfg: TrainConfig) -> str:
    """The short text printed when a run ends."""
    out = Path(results["out_dir"])
    lines = [
        "",
        "=" * 72,
        f"nmt: training finished ({results['stop_reason']})",
        f"  updates {results['updates']}, epochs {results['epochs']}, "
        f"training time {results['train_time_s'] / 60:.1f} min",
    ]
    test = results.get("test")
    if test:
        lines += [
            f"  test BLEU {test['bleu']:.2f}  ({test['bleu_signature']})",
            f"  test chrF {test['chrf']:.2f}  ({test['chrf_signature']})",
            f"  beam {test['beam_size']}, checkpoint {test['checkpoint']}",
            f"  translations: {test['translations']}",
        ]
    lines += [
        f"  checkpoints:  {out}/best.pt, {out}/last.pt",
        f"  TensorBoard:  tensorboard --logdir {out}/tensorboard",
        f"  translate:    python -m nmt.translate ckpt={out}/best.pt input=FILE output=OUT",
        f"  resume:       python -m nmt.train resume={out}/last.pt",
        "=" * 72,
    ]
    return "\n".join(lines)


# keys that shape the model, its vocabulary or its data: a resumed run keeps them
FROZEN = (
    *("model.", "tokenizer.", "data.src", "data.tgt", "data.train", "data.dev", "data.test"),
    *("data.max_len", "data.max_ratio"),
)
CHANGEABLE = ("model.rnn_impl", "model.dropout")
GROUPS = ("data", "tokenizer", "model", "optim", "trainer", "decode", "experiment")


def resume_config(dcfg: DictConfig, overrides: list[str], out_dir: Path) -> TrainConfig:
    """The run's own config, stored in the checkpoint it resumes from, with only the
    command line's overrides applied (``trainer.max_time_min=60`` extends a run).

    Config groups cannot be chosen for a resumed run, and keys that shape the model, the
    vocabulary or the data cannot change: both are refused with one line naming each key."""
    from nmt.checkpoint import load_checkpoint
    from nmt.config import ConfigError, with_old_values
    from nmt.resume import find_resume

    composed = to_config(dcfg, TrainConfig)
    path = find_resume(composed, out_dir)
    assert path is not None
    stored = load_checkpoint(path).get("train_config")
    if not isinstance(stored, dict):  # written before configs were stored: use the command's
        return composed
    given = [
        o.lstrip("+~") for o in overrides if not o.startswith(("hydra.", "resume=", "out_dir="))
    ]
    groups = [o for o in given if o.split("=", 1)[0] in GROUPS]
    if groups:
        raise ConfigError(
            f"resume: config groups cannot be chosen for a resumed run ({', '.join(groups)}); "
            "it keeps its own config: override single keys"
        )
    stored = {  # keys added since the run was stored get the value the run had
        k: with_old_values(k, v) if isinstance(v, dict) else v for k, v in stored.items()
    }
    known = OmegaConf.structured(TrainConfig)
    base = OmegaConf.merge(known, _known_keys(stored, OmegaConf.to_container(known)))
    changes = OmegaConf.from_dotlist(given)
    changed = []
    for override in given:
        key = override.split("=", 1)[0]
        if key.startswith(FROZEN) and not key.startswith(CHANGEABLE):
            before, after = OmegaConf.select(base, key), OmegaConf.select(changes, key)
            if str(before) != str(after):
                changed.append(f"{key}: {before} in the run, {after} on the command line")
    if changed:
        raise ConfigError(
            f"resume={composed.resume}: these keys cannot change under a resumed run: "
            + "; ".join(changed)
        )
    merged = OmegaConf.merge(base, changes)
    merged.resume = composed.resume
    merged.out_dir = composed.out_dir
    return to_config(merged, TrainConfig)


def _known_keys(stored: dict, schema: object) -> dict:
    """``stored`` without keys the current schema no longer has (older checkpoints)."""
    if not isinstance(schema, dict):
        return stored
    return {
        k: _known_keys(v, schema[k]) if isinstance(v, dict) else v
        for k, v in stored.items()
        if k in schema
    }


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(dcfg: DictConfig) -> None:
    from nmt import distributed as dist_utils
    from nmt.checkpoint import CheckpointError
    from nmt.data import DataError
    from nmt.trainer import TrainingError, TrainingInterrupted, train

    ctx = dist_utils.DistContext()
    try:
        with user_errors(DataError, CheckpointError, TrainingError, ValueError):
            cfg = to_config(dcfg, TrainConfig)
            out_dir = Path(cfg.out_dir or HydraConfig.get().runtime.output_dir)
            if cfg.resume:
                cfg = resume_config(dcfg, list(HydraConfig.get().overrides.task), out_dir)
            # join torchrun's process group here (train() reuses it and leaves it when done)
            ctx = dist_utils.init(cfg.device, cfg.trainer.dist_timeout_s)
            if ctx.rank != 0:
                logging.basicConfig(
                    level=logging.WARNING,
                    format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s",
                    stream=sys.stderr,
                    force=True,
                )
            out_dir = Path(dist_utils.broadcast_object(ctx, str(out_dir)))
            results = train(cfg, out_dir)
    except TrainingInterrupted as e:
        if ctx.rank == 0 and e.path is not None:
            print(
                f"interrupted: saved {e.path}; resume with: python -m nmt.train resume={e.path}",
                file=sys.stderr,
            )
        elif ctx.rank == 0:
            print("interrupted before training started: nothing to save", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; last.pt is the last saved one
        print("interrupted: stopped at once; last.pt holds the last saved update", file=sys.stderr)
        sys.exit(130)
    if ctx.rank == 0:
        print(report(results, cfg), flush=True)


def resume_dir_override(argv: list[str]) -> list[str]:
    """``resume=X`` alone continues the run in X's directory (not in a new timestamped one):
    its log, TensorBoard files and checkpoints stay together."""
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not resume or any(a.startswith(("hydra.run.dir=", "out_dir=")) for a in argv):
        return []
    path = Path(resume[-1])
    run_dir = path if path.is_dir() else path.parent
    return [f"hydra.run.dir={run_dir}"]


def cli() -> None:
    """The ``nmt-train`` command (``python -m nmt.train`` runs the same)."""
    sys.argv += worker_overrides() or resume_dir_override(sys.argv[1:])
    main()


def worker_overrides() -> list[str]:
    """Extra Hydra overrides for torchrun ranks other than 0: no ``.hydra/``, no log file, no
    run directory of their own (they use rank 0's, see ``main``)."""
    if os.environ.get("RANK", "0") == "0":  # torchrun's variable; absent in a plain run
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra.run.dir=."]


if __name__ == "__main__":
    cli()
