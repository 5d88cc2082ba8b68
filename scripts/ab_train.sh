#!/usr/bin/env bash
# Training throughput of an older commit against the working tree, alternating, on this machine.
#
#   [NEW_ARGS="overrides for the working tree only"] \
#       scripts/ab_train.sh OLD_REV [ROUNDS] [UPDATES] [-- overrides for both sides...]
#   NEW_ARGS=tokenizer.target_vocab=all scripts/ab_train.sh 911b5e3 2 200 -- experiment=default
#
# Each round trains OLD_REV (checked out with `git worktree add` in a temporary directory) and
# then the working tree, each a fresh `python -m nmt.train` process with its own cache under the
# temporary directory, validation and checkpoints pushed past the end, and stops it once the
# log line of update UPDATES appears. Prints the target tokens/s of every 50-update log interval
# (the first is warm-up) and the load average; compare medians of the same intervals. The
# temporary directory (worktree, caches, runs) is removed at the end. Uses .venv/bin/python;
# OLD_REV must accept the same overrides. Never run in CI (minutes of CPU, and timing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: scripts/ab_train.sh OLD_REV [ROUNDS] [UPDATES] [-- overrides...]}
rounds=${2:-2}
updates=${3:-200}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
python=$root/.venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/nmt-ab.XXXXXX")
cleanup() {
    git -C "$root" worktree remove --force "$work/old" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add --quiet --detach "$work/old" "$old"
for round in $(seq 1 "$rounds"); do
    for side in old new; do
        if [ "$side" = old ]; then dir=$work/old; extra=(); else dir=$root; read -ra extra <<<"${NEW_ARGS:-}"; fi
        log=$work/$side-$round.log
        (cd "$dir" && PYTHONPATH=$dir exec "$python" -m nmt.train hydra.run.dir="$work/run-$side-$round" \
            trainer.max_updates=0 trainer.max_time_min=0 trainer.valid_every=1000000 \
            trainer.save_every=1000000 trainer.log_every=50 data.cache_dir="$work/cache-$side" \
            "$@" "${extra[@]}" >"$log" 2>&1) &
        pid=$!
        until grep -q "update $updates " "$log" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || { echo "$side round $round ended early: see below"; tail -5 "$log"; exit 1; }
            sleep 1
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true
        rates=$(grep -o '[0-9]* tgt tok/s' "$log" | awk '{print $1}' | tr '\n' ' ')
        echo "$side round $round: tgt tok/s per 50 updates: $rates(load $(cut -d' ' -f1 /proc/loadavg))"
    done
done
