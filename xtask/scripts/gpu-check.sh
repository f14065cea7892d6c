#!/usr/bin/env bash
# Builds nothing in Rust: checks and times the CUDA backend on a GPU machine in one run.
#
#   xtask/scripts/gpu-check.sh --bins DIR --model IMAGE [--llama SRC] [--out DIR] [--stages LIST]
#
# DIR holds three x86-64 binaries built on a workstation (`cargo xtask gpu-bundle` makes them):
#   edgellm            cargo build --release -p edgellm --features cuda
#   cuda-kernel-tests  the edgellm-cuda test binary (cargo test -p edgellm-cuda --features cuda)
#   gpu_bench          cargo build --release -p edgellm-cuda --features cuda --example gpu_bench
# IMAGE is a converted SmolLM2 image (e.g. `edgellm convert ... --format q4 --head-format q4`).
# SRC is a llama.cpp source tree (directory or .tar.xz); it is built with CUDA for the
# side-by-side figures. Stages (default: all): kernels, kernel-bench, llama, e2e, bench.
set -uo pipefail

bins= model= llama= out=${OUT:-/tmp/gpu-check} stages=kernels,kernel-bench,llama,e2e,bench
while [ $# -gt 0 ]; do
    case $1 in
        --bins) bins=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --llama) llama=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --stages) stages=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$bins" ] || { echo "--bins DIR is required" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
status=0
has() { case ",$stages," in *",$1,"*) return 0 ;; esac; return 1; }
fail() { echo "FAIL: $*"; status=1; }

nvidia-smi -L || fail "no GPU visible"
nvcc --version 2>/dev/null | tail -1

if has kernels; then
    echo "== CUDA kernels against the CPU specification"
    EDGELLM_REQUIRE_GPU=1 "$bins/cuda-kernel-tests" --test-threads=1 2>&1 | tee "$out/kernel-tests.log" ||
        fail "kernel tests"
fi

if has kernel-bench; then
    echo "== kernel benchmarks"
    "$bins/gpu_bench" 2>&1 | tee "$out/kernel-bench.jsonl" || fail "gpu_bench"
fi

llama_bench=
if has llama && [ -n "$llama" ]; then
    echo "== llama.cpp with CUDA"
    dir=$llama
    if [ -f "$llama" ]; then
        dir=$(dirname "$llama")/llama-src
        mkdir -p "$dir" && tar -xJf "$llama" -C "$dir"
    fi
    if [ ! -x "$dir/build/bin/llama-bench" ]; then
        cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
        (cd "$dir" &&
            cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cap" -DLLAMA_CURL=OFF \
                -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >"$out/llama-cmake.log" 2>&1 &&
            cmake --build build -j"$(nproc)" --target llama-bench >"$out/llama-build.log" 2>&1) ||
            fail "llama.cpp build (see llama-build.log)"
    fi
    [ -x "$dir/build/bin/llama-bench" ] && llama_bench=$dir/build/bin/llama-bench
fi
if [ -z "$llama_bench" ] && [ -n "$llama" ]; then
    for c in "$llama/build/bin/llama-bench" "$(dirname "$llama")/llama-src/build/bin/llama-bench"; do
        [ -x "$c" ] && llama_bench=$c && break
    done
fi

if has e2e && [ -n "$model" ]; then
    echo "== greedy tokens: GPU against CPU on the reference prompts"
    ref="$here/tests/data/smollm2/reference.json"
    for name in capital chat_pi code; do
        text=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prompts'][sys.argv[2]]['text'], end='')" "$ref" "$name")
        for dev in cpu cuda cuda-int8; do
            kv=f16 d=$dev
            [ "$dev" = cuda-int8 ] && kv=int8 d=cuda
            "$bins/edgellm" run --model "$model" --prompt "$text" --raw --temp 0 -n 24 --json \
                --device "$d" --kv-cache "$kv" >"$out/e2e-$name-$dev.json" 2>"$out/e2e-$name-$dev.err" ||
                fail "run $name on $dev: $(tail -1 "$out/e2e-$name-$dev.err")"
        done
        python3 - "$out" "$name" <<'PY' || status=1
import json, sys
out, name = sys.argv[1], sys.argv[2]
ids = {d: json.load(open(f"{out}/e2e-{name}-{d}.json"))["ids"] for d in ("cpu", "cuda", "cuda-int8")}
for d in ("cuda", "cuda-int8"):
    same = next((i for i, (a, b) in enumerate(zip(ids["cpu"], ids[d])) if a != b), min(len(ids["cpu"]), len(ids[d])))
    print(f"{name}: {d} equals cpu for the first {same} of {len(ids['cpu'])} tokens")
    if d == "cuda" and same < 16:
        print(f"FAIL: {name}: cpu {ids['cpu']}\n      {d} {ids[d]}")
        sys.exit(1)
PY
    done
fi

if has bench && [ -n "$model" ]; then
    echo "== decode and prefill, side by side with llama.cpp on the same file"
    peer=()
    [ -n "$llama_bench" ] && peer=(--compare-llamacpp --llamacpp-bench "$llama_bench" --llamacpp-ngl 99)
    for kv in f16 int8; do
        "$bins/edgellm" bench --model "$model" --device cuda --kv-cache "$kv" -p 512 -g 128 -r 5 \
            "${peer[@]}" --json 2>"$out/bench-$kv.err" | tee "$out/bench-$kv.json" || fail "bench $kv"
    done
    "$bins/edgellm" bench --model "$model" --device cuda -p 512 -g 128 -r 3 2>&1 | tail -8
fi

[ $status -eq 0 ] && echo "gpu-check: all passed" || echo "gpu-check: FAILED"
exit $status
