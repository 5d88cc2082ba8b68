"""``nmt-average`` (``python -m nmt.average``): average the weights of several checkpoints
into one that ``nmt.translate`` accepts.

    nmt-average --run runs/default --last 3 -o runs/default/avg.pt
    nmt-average a.pt b.pt c.pt -o avg.pt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nmt.checkpoint import CheckpointError, average_checkpoints, load_checkpoint, save_checkpoint


def last_checkpoints(run: Path, n: int) -> list[Path]:
    """The ``n`` most recent of the best-N checkpoints that the run's ``last.pt`` keeps.

    Only those: a ``ckpt_u*.pt`` of an earlier run left in the same directory is not this
    run's, and is never averaged in."""
    last = run / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{run}: no last.pt, so no list of kept checkpoints; name them")
    kept = load_checkpoint(last).get("trainer", {}).get("state", {}).get("kept", [])
    found = sorted(
        (int(m.group(1)), run / Path(name).name)
        for _, name in kept
        if (m := re.fullmatch(r"ckpt_u(\d+)\.pt", Path(name).name))
    )
    if len(found) < n:
        raise CheckpointError(f"{run}: --last {n}, but last.pt keeps {len(found)} checkpoints")
    return [p for _, p in found[-n:]]


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit status (2 for a bad checkpoint or request)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoints", nargs="*", type=Path, help="checkpoints to average")
    ap.add_argument("--run", type=Path, help="a run directory (with --last)")
    ap.add_argument("--last", type=int, default=0, help="average the last N ckpt_u*.pt of --run")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    paths = list(args.checkpoints)
    if args.last and args.run is None:
        ap.error("--last needs --run")
    try:
        if args.last:
            paths += last_checkpoints(args.run, args.last)
        if not paths:
            ap.error("no checkpoints to average")
        averaged = average_checkpoints(paths)
        save_checkpoint(args.output, averaged)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints into {args.output}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
