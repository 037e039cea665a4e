#!/usr/bin/env bash
# Stand-in for the GPU box's python in `perf/gpu_validate.sh --dry-run`: records its argv, prints output shaped
# like each step's (marked "stub"), and for `report --out DIR` writes the five files a report writes. No torch.
# Knobs (for correctness/test_gpu_validate.py):
#   GPU_VALIDATE_STUB_LOG    append one line per call: the argv
#   GPU_VALIDATE_STUB_FAIL   a call whose argv contains this string exits 1 after its output
#   GPU_VALIDATE_STUB_HANG   a call whose argv contains this string sleeps 60 s first (its time box ends it)
#   GPU_VALIDATE_STUB_SLUG   the slug env reports (default h200; "none": no spec fits; "no-gpu": no CUDA device)
args="$*"
[ -n "${GPU_VALIDATE_STUB_LOG:-}" ] && printf '%s\n' "$args" >> "$GPU_VALIDATE_STUB_LOG"
has() { [ -n "$1" ] && [[ "$args" == *"$1"* ]]; }
has "${GPU_VALIDATE_STUB_HANG:-}" && sleep 60
slug=${GPU_VALIDATE_STUB_SLUG:-h200}

case "$args" in
"-m perf.gpu_probe env")
    if [ "$slug" = no-gpu ]; then
        printf '{\n "stub": true,\n "cuda": false,\n "gpu": null,\n "slug": null,\n "slug_note": "no CUDA device"\n}\n'
    elif [ "$slug" = none ]; then
        printf '{\n "stub": true,\n "cuda": true,\n "slug": null,\n "slug_note": "stub GPU not in roofline/specs.py"\n}\n'
    else
        printf '{\n "stub": true,\n "cuda": true,\n "gpu": {"name": "NVIDIA H200 (stub)", "sms": 132},\n'
        printf ' "slug": "%s",\n "slug_note": "matched (stub)"\n}\n' "$slug"
    fi ;;
"-m perf.gpu_probe bandwidth")
    printf '{"stub": true, "copy": {"gb_per_s": 4100.0}, "matmul_bf16": [{"n": 8192, "tflop_per_s": 700.0}]}\n' ;;
"-m pytest"*)
    echo "stub: 42 passed in 1.00s" ;;
"-m servekernels.cli check"*)
    echo "stub check: 40 cases, 0 failed" ;;
"-m perf.gpu_probe graphs"*)
    for c in paged_decode fused_moe; do
        printf '{"case": "%s", "captured": true, "replay_equals_eager": true, "stub": true}\n' "$c"
    done ;;
"-m servekernels.cli report"*)
    out=""; prev=""; sel=(); flags=()
    for a in "$@"; do
        [ "$prev" = --out ] && out=$a
        [ "$prev" = -k ] && sel+=("$a")
        case "$prev" in -k|--skip) flags+=("$prev $a") ;; esac
        prev=$a
    done
    if [ -z "$out" ]; then echo "stub report: no --out" >&2; exit 2; fi
    mkdir -p "$out"
    printf '# stub report\n\n| case | selected by |\n| --- | --- |\n' > "$out/report.md"
    for f in "${flags[@]}"; do printf '| stub | %s |\n' "$f" >> "$out/report.md"; done
    printf '{\n "stub": true,\n "selection": {"k": [%s]}\n}\n' "$( [ ${#sel[@]} -gt 0 ] && printf '"%s",' "${sel[@]}" | sed 's/,$//')" \
        > "$out/report.json"
    : > "$out/report.csv"; : > "$out/roofline.png"; : > "$out/traffic.png"
    echo "stub report -> $out" ;;
*)
    echo "gpu_validate_stub: unexpected call: $args" >&2
    exit 2 ;;
esac
has "${GPU_VALIDATE_STUB_FAIL:-}" && { echo "stub: failing on purpose ($GPU_VALIDATE_STUB_FAIL)" >&2; exit 1; }
exit 0
