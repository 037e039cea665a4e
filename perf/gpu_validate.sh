#!/usr/bin/env bash
# The first run on a GPU, prepared: one time-boxed pass (under 9 minutes) that writes its results into one
# folder, at most 8 files. README, "First run on a GPU", says when and how.
#
#   perf/gpu_validate.sh             results in $OUT (default ./gpu-validate-out)
#   perf/gpu_validate.sh --dry-run   the same control flow with perf/gpu_validate_stub.sh as python (no GPU)
#
# Installs nothing: runs $SERVEKERNELS_GPU_VALIDATE_PYTHON (default python3: a CUDA torch, triton, numpy, pytest,
# hypothesis) with PYTHONPATH=<repo root>, the CLI as `python -m servekernels.cli`. Steps, in this order, each
# under `timeout` with its own box, all inside one budget; a step that fails or runs out of time is recorded and
# the next one runs:
#   env         env.json            versions, GPU, driver, host, and the spec slug the report uses
#   bandwidth   probe.json          device-to-device copy GB/s and bf16 matmul TFLOP/s (perf/gpu_probe.py)
#   pytest      pytest-gpu.txt      the gpu-marked tests of correctness/
#   check       check.txt           servekernels check
#   graphs      graphs.jsonl        every op's launch case captured in a CUDA graph, replayed, compared to eager
#   report-*    report-quick.md     servekernels report --quick --gpu SLUG, one group of cases per run (-k), each
#               report-quick.jsonl  appended as it ends (md; report.json as one line), so a cut-off run keeps
#                                   the groups before the cut
#   steps.log   every step's box, status, seconds and stderr, then the summary (also printed)
# Exit status: 0 every step passed; 1 a step failed, timed out or was skipped; 2 not a GPU run (env.json says
# there is no CUDA device) or a usage error.
# Knobs: GPU_VALIDATE_BUDGET_S (total seconds, default 530); GPU_VALIDATE_TIMEOUT_<step> (one step's box; a
# step's name with - as _, e.g. GPU_VALIDATE_TIMEOUT_report_gemm=120).
set -uo pipefail

dry_run=${GPU_VALIDATE_DRY_RUN:-0}
for arg in "$@"; do
    case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_validate.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done
command -v timeout >/dev/null || { echo "gpu_validate.sh: needs coreutils timeout" >&2; exit 2; }

out=${OUT:-gpu-validate-out}
mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "gpu_validate.sh: cannot create OUT=$out" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry_run" = 1 ]; then
    py="$root/perf/gpu_validate_stub.sh"
else
    py=${SERVEKERNELS_GPU_VALIDATE_PYTHON:-python3}
fi

FILES=(steps.log env.json probe.json pytest-gpu.txt check.txt graphs.jsonl report-quick.md report-quick.jsonl)
for f in "${FILES[@]}"; do rm -f "$out/$f"; done
log="$out/steps.log"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-validate.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

budget=${GPU_VALIDATE_BUDGET_S:-530}
KILL_GRACE=5   # timeout -k: SIGKILL this long after SIGTERM
MIN_STEP=10    # a step with less budget than this left is skipped
# report groups, cheapest first (name:substring,substring); together they select every --quick case: the one
# with no substring ("small:") takes every case the others do not (--skip theirs), so a new op needs no entry
REPORT_GROUPS=("attention:/decode/,/prefill/" "small:" "gemm:w13/" "moe:/moe-")
# boxes (s): the report groups' from the H200 estimate in the README x ~1.3; their sum runs past the budget,
# which then cuts the last group(s) (run them afterwards with the command in steps.log)
declare -A BOX=([env]=30 [bandwidth]=30 [pytest]=120 [check]=60 [graphs]=60
                [report-attention]=150 [report-small]=45 [report-gemm]=130 [report-moe]=130)
declare -a summary=()
failed=0
last=""

box_of() {  # the step's time box: GPU_VALIDATE_TIMEOUT_<name> or the table above
    local var="GPU_VALIDATE_TIMEOUT_${1//-/_}"
    echo "${!var:-${BOX[$1]}}"
}

record() {  # record NAME STATUS SECONDS BOX
    local line
    line=$(printf '%-18s %-26s %4ss of %ss' "$1" "$2" "$3" "$4")
    summary+=("$line")
    last="$2 in $3 s (box $4 s)"
    echo "-- $line" >> "$log"
    [ "$2" = pass ] || failed=1
}

step() {  # step NAME STDOUT_FILE STDERR_FILE CMD...: run CMD in its time box, clipped to the budget left
    local name=$1 dest=$2 err=$3 box left t0 rc status
    shift 3
    box=$(box_of "$name")
    left=$(( budget - SECONDS - KILL_GRACE ))
    if (( left < MIN_STEP )); then
        record "$name" "skipped: out of time" 0 "$box"
        return 1
    fi
    (( box > left )) && box=$left
    echo "== $name: box ${box}s, ${SECONDS}s of ${budget}s used: $*" >> "$log"
    t0=$SECONDS
    timeout -k "$KILL_GRACE" "$box" "$@" >> "$dest" 2>> "$err"
    rc=$?
    case $rc in
    0) status=pass ;;
    124|137) status="TIMED OUT" ;;
    *) status="FAIL (exit $rc)" ;;
    esac
    record "$name" "$status" $(( SECONDS - t0 )) "$box"
    return $rc
}

{
    echo "gpu_validate.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): budget ${budget}s, out $out"
    [ "$dry_run" = 1 ] && echo "DRY RUN: python is $py (a stub; nothing here ran on a GPU)"
    total=0
    for name in env bandwidth pytest check graphs report-attention report-small report-gemm report-moe; do
        total=$(( total + $(box_of "$name") + KILL_GRACE ))
        echo "plan: $name box $(box_of "$name")s"
    done
    echo "plan: boxes + kill grace = ${total}s (the budget clips whatever runs late)"
} >> "$log"

step env "$out/env.json" "$log" "$py" -m perf.gpu_probe env
if grep -q '^ "cuda": false' "$out/env.json" 2>/dev/null; then
    echo "gpu_validate.sh: no CUDA device here (env.json); this is a GPU run: stopping" | tee -a "$log" >&2
    exit 2
fi
slug_line=$(grep -m1 '^ "slug": ' "$out/env.json" 2>/dev/null)
slug=$(printf '%s' "$slug_line" | sed -n 's/^ "slug": "\([^"]*\)".*/\1/p')

step bandwidth "$out/probe.json" "$log" "$py" -m perf.gpu_probe bandwidth
step pytest "$out/pytest-gpu.txt" "$out/pytest-gpu.txt" "$py" -m pytest -m gpu -q -p no:cacheprovider \
    --durations=15 correctness
step check "$out/check.txt" "$out/check.txt" "$py" -m servekernels.cli check
step graphs "$out/graphs.jsonl" "$log" "$py" -m perf.gpu_probe graphs

if [ -n "$slug" ]; then
    gpu_args=(--gpu "$slug")
elif [ -n "$slug_line" ]; then  # env ran and found no spec for this GPU
    gpu_args=()
    no_spec="no spec in roofline/specs.py fits this GPU (env.json slug_note): add one (SERVEKERNELS_GPU_SPECS)"
else  # env failed: let the report detect the GPU itself
    gpu_args=()
fi
for group in "${REPORT_GROUPS[@]}"; do
    name=${group%%:*}
    IFS=, read -ra subs <<< "${group#*:}"
    kargs=()
    for s in "${subs[@]}"; do kargs+=(-k "$s"); done
    if [ ${#subs[@]} -eq 0 ]; then  # the rest: every quick case no other group selects
        for other in "${REPORT_GROUPS[@]}"; do
            IFS=, read -ra osubs <<< "${other#*:}"
            for s in "${osubs[@]}"; do kargs+=(--skip "$s"); done
        done
    fi
    dir="$tmp/report-$name"
    header="## report group $name (${kargs[*]})"
    if [ -n "${no_spec:-}" ]; then
        record "report-$name" "skipped: no GPU spec" 0 "$(box_of "report-$name")"
        printf '%s: skipped, %s\n\n' "$header" "$no_spec" >> "$out/report-quick.md"
        continue
    fi
    step "report-$name" "$log" "$log" "$py" -m servekernels.cli report --quick "${gpu_args[@]}" "${kargs[@]}" \
        --out "$dir"
    printf '%s: %s\n\n' "$header" "$last" >> "$out/report-quick.md"
    if [ -f "$dir/report.md" ]; then
        cat "$dir/report.md" >> "$out/report-quick.md"
        printf '\n(plots not kept: at most 8 files in OUT)\n\n' >> "$out/report-quick.md"
    fi
    if [ -f "$dir/report.json" ]; then
        { tr -d '\n' < "$dir/report.json"; echo; } >> "$out/report-quick.jsonl"
    fi
done

{
    echo
    echo "summary ($SECONDS s of ${budget}s; $(ls "$out" | grep -cxF -f <(printf '%s\n' "${FILES[@]}")) files in $out):"
    printf '  %s\n' "${summary[@]}"
    if (( failed )); then echo "NOT everything passed"; else echo "every step passed"; fi
} | tee -a "$log"
exit $failed
