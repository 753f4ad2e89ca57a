#!/usr/bin/env bash
# The GPU throughput table in one call: build official VMamba's compiled scan for this GPU and run
# benchmarks/bench_gpu.py against it, build and measurement within one 10-minute command. The build
# runs on the CPU beside the first rows (ours, timm's); each stage's official rows wait for it.
#
#   bash benchmarks/gpu_table.sh OFFICIAL [bench_gpu.py arguments]            # on the GPU machine
#   bash benchmarks/gpu_table.sh --dry-run OFFICIAL [bench_gpu.py arguments]  # anywhere, no GPU:
#       prints the build command, builds every model on the CPU, compares parameter counts
#
# OFFICIAL is the root of an official VMamba checkout (MIT licence): a peer we measure against,
# imported from there at run time and never copied into this repository's history.
#
# On a remote GPU machine that receives only this repository's working tree, copy the official
# checkout into a folder inside the repository that git ignores, and send that folder along:
#
#   echo /.peers/ >> .git/info/exclude
#   mkdir -p .peers && cp -r path/to/VMamba .peers/official-vmamba
#   then, there: bash benchmarks/gpu_table.sh .peers/official-vmamba   (under 10 minutes)
#
# That machine has nvcc, ninja, timm and torchvision; fvcore (which the official model file
# imports for FLOP counts only) is replaced by a stand-in when missing (gpu_model_rows.py).
#
# Time: BUDGET_S (default 540) seconds for everything; the build may take BUILD_TIMEOUT_S
# (default 300) of them. A failed or timed-out build does not stop the table: its rows say
# "skipped". bench_gpu.py runs VMamba-T's rows first and skips those that would end after the
# budget.
#
# Outputs, in $OUT when it is set, else outputs/gpu_table/: build.log (this script's build
# step), bench.log (everything bench_gpu.py printed), gpu_table.md (settings and the table),
# gpu_rows.json (every row). BUILD_DIR (default $TMPDIR/vmamba-official-oflex) holds the build.
set -euo pipefail

dry_run=()
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=(--dry-run)
    shift
fi
if [[ $# -lt 1 ]]; then
    echo "usage: bash benchmarks/gpu_table.sh [--dry-run] OFFICIAL [bench_gpu.py arguments]" >&2
    exit 2
fi
official=$1
shift
if [[ ! -d "$official" ]]; then
    echo "gpu_table.sh: OFFICIAL '$official' is not a folder;" \
        "pass the root of an official VMamba checkout" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu_table}
mkdir -p "$out"
budget=${BUDGET_S:-540}
build_timeout=${BUILD_TIMEOUT_S:-300}
build_dir=${BUILD_DIR:-${TMPDIR:-/tmp}/vmamba-official-oflex}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
start=$SECONDS

build_args=(--official "$official" --build-dir "$build_dir" --timeout-s "$build_timeout")
if [[ ${#dry_run[@]} -gt 0 ]]; then
    echo "== build: dry run, official selective_scan_cuda_oflex into $build_dir"
    "$python" benchmarks/build_official_kernels.py "${build_args[@]}" --dry-run 2>&1 \
        | tee "$out/build.log"
    bench_build=()  # nothing was built
else
    echo "== build: official selective_scan_cuda_oflex into $build_dir (at most ${build_timeout} s)," \
        "in the background; log: $out/build.log"
    mkdir -p "$build_dir"
    rm -f "$build_dir/status.json"
    (
        set +e
        "$python" benchmarks/build_official_kernels.py "${build_args[@]}" > "$out/build.log" 2>&1
        code=$?
        # a crash before the script's own status file would leave bench_gpu.py waiting
        if [[ ! -f "$build_dir/status.json" ]]; then
            reason="build_official_kernels.py exited with $code before its status (see build.log)"
            printf '{"ok": false, "reason": "%s", "seconds": null, "module": null}\n' "$reason" \
                > "$build_dir/status.json"
        fi
    ) &
    build_pid=$!
    bench_build=(--official-build "$build_dir" --wait-for-build)
fi

left=$((budget - (SECONDS - start)))
echo "== measure: $left s left of $budget"
set +e
"$python" benchmarks/bench_gpu.py "${dry_run[@]}" --official "$official" "${bench_build[@]}" \
    --budget-s "$left" --table "$out/gpu_table.md" --json "$out/gpu_rows.json" "$@" 2>&1 \
    | tee "$out/bench.log"
status=${PIPESTATUS[0]}
set -e
if [[ -n "${build_pid:-}" ]]; then
    wait "$build_pid" || true  # its outcome is in build.log and in the table's official rows
    echo "== build log: $out/build.log (nvcc's full output: $build_dir/build.log)"
fi
echo "== done in $((SECONDS - start)) s; table: $out/gpu_table.md"
exit "$status"
