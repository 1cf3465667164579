#!/usr/bin/env bash
# The GPU numbers in one command: the compiled kernel-equivalence tests (grid and fused MLP),
# the grid benchmark (BRICS and Instant-NGP shapes, memory, roofline), the CUDA peers side by
# side, the fused MLP and NetworkWithInputEncoding at tcnn's sample shape, the BRICS training
# step against VQ-f4 (TF32 and bf16, batch 12, 256^2) and a first 200-step training run on
# CUDA with a resume. At most 8 minutes on an H200: each part has its own time limit and
# writes its files as soon as it has measured them, so a run cut short keeps what it measured.
# Six files in one folder (the device returns at most 8): runs.txt (the tests and the
# training run), grid.md, peers.md, mlp.md, train_step.md, and json.tar (their JSON).
#
#   bash bench/gpu_suite.sh OUT            # on a CUDA machine
#   bash bench/gpu_suite.sh --smoke OUT    # every part in seconds on the CPU (the tests run it)
#
# The peers come from fetched copies in $GRIDCODES_PEERS (bench/peers/bench_peers.py);
# wheels the machine lacks (diffusers for VQ-f4, lpips) are installed from $GRIDCODES_WHEELS
# when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
out=${1:?usage: bash bench/gpu_suite.sh [--smoke] OUT}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "${GRIDCODES_WHEELS:-}" ] && [ -d "$GRIDCODES_WHEELS" ]; then
    pip install --quiet --no-deps "$GRIDCODES_WHEELS"/*.whl || echo "(some wheels did not install)"
fi

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $work/NAME.log
    local name=$1 seconds=$(($2 * limit_scale))
    shift 2
    echo "== $name (at most $seconds s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$seconds" "$@" >"$work/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$work/summary.txt"
    tail -n 3 "$work/$name.log"
}

limit_scale=1  # the limits are sized for an H200; the smoke run's CPU gets 6x as long
if [ $smoke = 1 ]; then
    limit_scale=6
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
    equivalence=(python -m pytest -q -p no:cacheprovider tests/test_levels.py)
    grid=(python bench/bench_grid.py --device cpu --shapes small64 --modes forward
          --max-points 256 --out "$out/grid")
    peers=(python bench/peers/bench_peers.py --smoke --device cpu --out "$out")
    mlp=(python bench/bench_mlp.py --smoke --out "$out/mlp")
    step=(python bench/train_step.py --device cpu --preset tiny-32 --batch-size 2 --rounds 1
          --warmup 0 --no-count --out "$out/train_step")
    run=(--preset tiny-32 --batch-size 4 --gan-start 2 --reg-interval 2 --perceptual none)
    steps=(4 6)
else
    unset TRITON_INTERPRET
    equivalence=(env GRIDCODES_EXAMPLES_SCALE=2 python -m pytest -q -p no:cacheprovider -n 8
                 tests/test_kernels.py tests/test_multires_grid.py tests/test_double_backward.py
                 tests/test_tcnn.py tests/test_mlp.py tests/test_tcnn_api.py
                 tests/test_tcnn_encodings.py)
    grid=(python bench/bench_grid.py --shapes brics ngp --out "$out/grid")
    peers=(python bench/peers/bench_peers.py --out "$out")
    mlp=(python bench/bench_mlp.py --out "$out/mlp")
    step=(python bench/train_step.py --device cuda --no-count --steps 10 --warmup 3
          --out "$out/train_step")
    run=(--preset small-64 --gan-start 100 --reg-interval 16 --perceptual none)
    steps=(200 220)
fi

part equivalence 110 "${equivalence[@]}"
{ echo "# Kernel-equivalence tests ($(date -I))"; tail -n 40 "$work/equivalence.log"; } >"$out/runs.txt"
part grid 75 "${grid[@]}"
part peers 70 "${peers[@]}"
part mlp 50 "${mlp[@]}"
part train_step 100 "${step[@]}"

# A first real training run through train/ae.py, then a resume from its checkpoint.
train=(python train/ae.py --output-dir "$work/run" --eval-every "${steps[0]}"
       --save-every "${steps[0]}" --log-every 10 "${run[@]}")
part train_run 45 "${train[@]}" --max-steps "${steps[0]}"
part train_resume 30 "${train[@]}" --max-steps "${steps[1]}"
{
    echo "# Stage-1 training run through train/ae.py ($(date -I))"
    echo
    grep -h -E "PSNR|psnr|resumed from|stopped|Error|error" "$work/train_run.log" \
        "$work/train_resume.log" | tail -n 20
    echo
    echo "metrics.json:"
    cat "$work/run/metrics.json" 2>/dev/null | tail -n 40 || echo "(none written)"
    echo
    echo "losses (TensorBoard scalars train/loss):"
    python - "$work/run" <<'EOF' 2>&1 | tail -n 30
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

for events in sorted(Path(sys.argv[1]).rglob("events.out.tfevents.*")):
    log = EventAccumulator(str(events))
    log.Reload()
    if "train/loss" in log.Tags()["scalars"]:
        for e in log.Scalars("train/loss"):
            print(f"step {e.step}: {e.value:.4f}")
EOF
} >>"$out/runs.txt"
(cd "$out" && tar -cf json.tar -- *.json && rm -f -- *.json)

echo
echo "== summary ($out)"
cat "$work/summary.txt"
grep -h -A 12 "^| provider" "$out/train_step.md" 2>/dev/null | head -n 14
grep -h "passed\|failed" "$out/runs.txt" | head -n 1
ls "$out"
