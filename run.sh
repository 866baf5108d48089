#!/usr/bin/env bash
# One command for a contest participant:
#   bash run.sh [train options]   set up .venv, train, predict -> submissions/submission.csv
#   bash run.sh cv [cv options]    the same through k-fold cross-validation (default: 5 folds of the
#                                  default recipe): out-of-fold figures, then the fold ensemble's submission
#   bash run.sh test [pytest args] run the test suite in the same environment
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=.venv
# A time budget (--minutes, the presets quick, default and best) counts from here, set-up included.
STARTED="${COMPETITION_STARTED_AT:-$(date +%s.%N)}"
PY="$VENV/bin/python"
# Paddle's own index for 3.x GPU wheels (PyPI's paddlepaddle-gpu stops at 2.6);
# override for another CUDA version, e.g. .../stable/cu118/.
PADDLE_GPU_INDEX="${PADDLE_GPU_INDEX:-https://www.paddlepaddle.org.cn/packages/stable/cu126/}"

die() { echo "run.sh: $*" >&2; exit 1; }

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

setup_env() {
    local extra=cpu pipargs=()
    if has_nvidia_gpu; then
        extra=gpu
        pipargs=(--extra-index-url "$PADDLE_GPU_INDEX")
    fi
    # The stamp records what was installed; a second run with the same
    # setup.cfg and device kind reuses the environment without touching pip.
    # Headers of the oneDNN conv kernel (competition/kernels.cc); its library is the one in Paddle's wheel.
    local headers
    headers="$(cat competition/onednn-headers.txt)" || die "competition/onednn-headers.txt is missing."
    local stamp="$VENV/.installed-$extra-$({ cat setup.cfg; echo "$headers"; } | cksum | cut -d' ' -f1)"
    [ -f "$stamp" ] && return 0
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null 2>&1 || die "needs Python 3 ($python not found on PATH)."
    if [ ! -x "$PY" ]; then
        echo "run.sh: creating $VENV with $("$python" --version 2>&1)" >&2
        "$python" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)."
    fi
    echo "run.sh: installing the package with extras [$extra,dev] (once)" >&2
    # An editable install from setup.cfg alone needs pip 21.3; a newer pip (Python 3.11's venv has 23.2) is
    # not upgraded, which saved 3 s of a fresh clone's set-up.
    if ! "$PY" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))' 2>/dev/null; then
        "$PY" -m pip install --quiet --upgrade pip setuptools wheel >&2 \
            || die "could not upgrade pip in $VENV (is the package index reachable?)."
    fi
    "$PY" -m pip install --quiet "${pipargs[@]}" -e ".[$extra,dev]" >&2 \
        || die "installing the package with [$extra,dev] failed (see pip's output above)."
    # The boards (competition board, tune --board) are optional: training runs without them.
    "$PY" -m pip install --quiet -e ".[board]" >&2 \
        || echo "run.sh: could not install VisualDL and optuna-dashboard; training works without the boards." >&2
    # --no-deps: the headers alone (200 KB), not the 84 MB library wheel they name.
    "$PY" -m pip install --quiet --no-deps "$headers" >&2 \
        || echo "run.sh: could not install $headers; training will use Paddle's slower conv." >&2
    rm -f "$VENV"/.installed-*
    touch "$stamp"
}

# Training (train or cv) runs as a child that this script waits for, so that SIGINT, SIGTERM or SIGHUP sent to
# this script alone (kill PID, a scheduler, a closed terminal) reaches it: it stops every rank after
# saving and prints the resume line. A plain foreground command would train on after bash was gone.
competition() {
    COMPETITION_STARTED_AT="$STARTED" "$PY" -m competition "$@" &
    local child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM HUP
    while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
    trap - INT TERM HUP
    wait "$child"
}

# Whether training options need the default preset: none of them names a preset, a model or a run.
with_default_preset() {
    local arg
    for arg in "$@"; do
        case "$arg" in --preset|--preset=*|--model|--model=*|--resume|--resume=*) return 1 ;; esac
    done
}

setup_env
case "${1:-}" in
    -h|--help) exec "$PY" -m competition train --help ;;
esac
if [ "${1:-}" = "test" ]; then
    shift
    exec "$PY" -m pytest "$@"
fi
# The `default` preset (its 10-minute budget) unless the options name a preset, a model or a run to resume;
# other options apply on top of it (`bash run.sh --seed 1`). Then predict,
# averaging six views of each test image (the image, its mirror, both moved by one pixel): on two
# 10,000-row splits of the default preset +0.38 and +0.54 points over none, +0.07 and +0.22 over the
# mirror alone (BENCHMARKS.md); a few seconds for the cnn.
if [ "${1:-}" = "cv" ]; then
    shift
    with_default_preset "$@" && set -- --preset default "$@"
    # cv writes the fold ensemble's submission itself (its folder is not the newest run)
    competition cv --submit 6 "$@"
    exit 0
fi
with_default_preset "$@" && set -- --preset default "$@"
competition train "$@"
COMPETITION_STARTED_AT="$STARTED" exec "$PY" -m competition predict --tta 6
