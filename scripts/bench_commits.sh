#!/usr/bin/env bash
# A/B throughput of two commits on one machine: `didi bench` run on each commit's code in turn, ROUNDS times
# interleaved (old, new, old, new, ...), so that a slow minute of the machine hits both; read the ratio, not the
# absolute numbers. Inputs (config, tokens, teacher) are the same files for both.
#   scripts/bench_commits.sh OLD NEW OUT_DIR -- <didi bench arguments except --out-dir>
# e.g.
#   scripts/bench_commits.sh 08c9c14 HEAD results/bench-ab -- --configfile config.yaml --tokens results/tokens \
#       --tokenizer results/tokenizer --teacher results/teacher/ema --sections distill --timed-steps 60
# Writes OUT_DIR/<commit>-<round>/*.json (and .log) and prints the distillation iterations/s (and teacher tokens/s)
# of every run. ROUNDS=3 by default.
# Run it inside the project's environment (`make`, or its .venv) from the repository root.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
    echo "usage: $0 OLD NEW OUT_DIR -- <didi bench arguments>" >&2
    exit 2
fi
old=$(git rev-parse --short "$1") new=$(git rev-parse --short "$2") out=$3
shift 4
mkdir -p "$out"
trees=$(mktemp -d)
trap 'git worktree remove --force "$trees/$old" 2>/dev/null; git worktree remove --force "$trees/$new" 2>/dev/null; rm -rf "$trees"' EXIT
# -P: the working directory does not go first on sys.path, so each run imports its own tree's didi (checked)
for commit in "$old" "$new"; do
    git worktree add --detach --quiet "$trees/$commit" "$commit"
    imported=$(PYTHONPATH="$trees/$commit" "${PYTHON:-python}" -P -c 'import didi; print(didi.__file__)')
    if [ "$imported" != "$trees/$commit/didi/__init__.py" ]; then
        echo "$commit: python imports didi from $imported, not from $trees/$commit" >&2
        exit 1
    fi
done
for round in $(seq 1 "${ROUNDS:-3}"); do
    for commit in "$old" "$new"; do
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH="$trees/$commit" "${PYTHON:-python}" -P -m didi bench "$@" \
            --out-dir "$out/$commit-$round" > "$out/$commit-$round.log" 2>&1 || { cat "$out/$commit-$round.log"; exit 1; }
        printf '%s round %s: %s\n' "$commit" "$round" \
            "$(grep -h -o 'distillation: [0-9.e+-]* iterations/s\|teacher training: [0-9]* tokens/s' "$out/$commit-$round.log" | tr '\n' ' ')"
    done
done
