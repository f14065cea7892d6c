#!/usr/bin/env bash
# Checks and times the CUDA backend on a GPU machine in one run (it builds no Rust: the machine
# needs a CUDA driver, nvcc and cmake for llama.cpp, and Python with numpy).
#
#   xtask/scripts/gpu-check.sh --bins DIR --model IMAGE [--vocab GGUF] [--llama SRC] [--out DIR]
#
# DIR holds three x86-64 binaries built on a workstation:
#   edgellm            cargo build --release -p edgellm --features cuda
#   cuda-kernel-tests  the edgellm-cuda test binary (cargo test -p edgellm-cuda --features cuda --no-run)
#   gpu_bench          cargo build --release -p edgellm-cuda --features cuda --example gpu_bench
# IMAGE is a converted SmolLM2 image (`edgellm convert ... --format ternary --head-format q4`
#   is 45 MB); the GPU's greedy tokens on the reference prompts are compared with the CPU's.
# GGUF (optional) holds SmolLM2's tokenizer: a SmolLM2-135M-shaped file with random Q4_1 weights
#   is generated from it (xtask/scripts/make_bitnet_tq2.py), and both EdgeLLM and llama.cpp
#   decode and prefill it, side by side. The original SmolLM2 file does, or the 1.8 MB that
#   `make_bitnet_tq2.py --shapes smollm2-135m --vocab-only --vocab SmolLM2.gguf -o VOCAB` writes.
# SRC is a llama.cpp source tree (directory or .tar.xz, with gguf-py), built here with CUDA in
#   the background while the correctness checks run; everything timed runs after the build.
set -uo pipefail

bins= model= vocab= llama= out=${OUT:-/tmp/gpu-check}
while [ $# -gt 0 ]; do
    case $1 in
        --bins) bins=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --vocab) vocab=$2; shift 2 ;;
        --llama) llama=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$bins" ] || { echo "--bins DIR is required" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
mkdir -p "$out"
status=0
fail() { echo "FAIL: $*"; status=1; }

nvidia-smi -L || fail "no GPU visible"
nvcc --version 2>/dev/null | tail -1
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)

# llama.cpp: unpack and build in the background.
lsrc= build_pid=
if [ -n "$llama" ]; then
    lsrc=$llama
    if [ -f "$llama" ]; then
        lsrc=$work/llama-src
        mkdir -p "$lsrc" && tar -xJf "$llama" -C "$lsrc"
    fi
    if [ ! -x "$lsrc/build/bin/llama-bench" ]; then
        (cd "$lsrc" &&
            cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$cap" -DLLAMA_CURL=OFF \
                -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >"$out/llama-cmake.log" 2>&1 &&
            cmake --build build -j"$(nproc)" --target llama-bench >"$out/llama-build.log" 2>&1) &
        build_pid=$!
    fi
fi

echo "== CUDA kernels against the CPU specification"
EDGELLM_REQUIRE_GPU=1 "$bins/cuda-kernel-tests" --test-threads=1 2>&1 | tee "$out/kernel-tests.log" ||
    fail "kernel tests"

if [ -n "$model" ]; then
    echo "== greedy tokens: GPU against CPU on the reference prompts ($(basename "$model"))"
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
    head -3 "$out/e2e-capital-cuda.err"
    echo "== serve on the GPU: the Ollama and OpenAI APIs, greedy, against run"
    port=18734
    "$bins/edgellm" serve --model "$model" --device cuda --port $port --model-name m \
        >"$out/serve.log" 2>&1 &
    spid=$!
    prompt="The capital of France is"
    "$bins/edgellm" run --model "$model" --prompt "$prompt" --raw --temp 0 -n 16 --json \
        --device cuda >"$out/serve-run.json" 2>/dev/null || fail "run for the serve check"
    python3 - "$port" "$prompt" "$out/serve-run.json" <<'PY' || fail "serve on the GPU"
import json, sys, time, urllib.request
port, prompt, run = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))["text"]
base = f"http://127.0.0.1:{port}"
for _ in range(300):
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except Exception:
        time.sleep(0.2)
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))
a = post("/api/generate", {"model": "m", "prompt": prompt, "raw": True, "stream": False,
                           "options": {"temperature": 0, "num_predict": 16}})["response"]
b = post("/v1/completions", {"model": "m", "prompt": prompt, "max_tokens": 16,
                             "temperature": 0})["choices"][0]["text"]
print(f"ollama {a!r}\nopenai {b!r}\nrun    {run!r}")
sys.exit(0 if a and a == b == run else 1)
PY
    kill $spid 2>/dev/null
    wait $spid
    grep "^device" "$out/serve.log" || fail "serve did not say which device it runs on"
fi

# Everything timed runs after the llama.cpp build: a build on every host core slows the host
# thread that launches the kernels and replays the graphs.
if [ -n "$build_pid" ]; then
    echo "== waiting for the llama.cpp build"
    wait "$build_pid" || fail "llama.cpp build (llama-build.log)"
    build_pid=
fi

echo "== kernel benchmarks"
"$bins/gpu_bench" 2>&1 | tee "$out/kernel-bench.jsonl" || fail "gpu_bench"

echo "== what one dependent decode phase costs inside a single launch (kernels/cuda/bench/phase_cost.cu)"
if nvcc -O3 -arch=sm_"$cap" -o "$work/phase_cost" "$here/kernels/cuda/bench/phase_cost.cu" \
    >"$out/phase-cost-build.log" 2>&1; then
    "$work/phase_cost" | tee "$out/phase-cost.jsonl" || fail "phase_cost"
else
    fail "phase_cost build (phase-cost-build.log)"
fi

if [ -n "$model" ]; then
    echo "== EdgeLLM on the image"
    EDGELLM_CUDA_PROFILE=1 "$bins/edgellm" bench --model "$model" --device cuda -p 512 -g 128 -r 3 2>&1 |
        tee "$out/bench-image.txt"
fi

if [ -n "$vocab" ]; then
    echo "== SmolLM2-135M shapes, random Q4_1 weights: EdgeLLM and llama.cpp on the same file"
    rnd=$work/smollm2-random-q4_1.gguf
    [ -n "$lsrc" ] && export PYTHONPATH=$lsrc/gguf-py
    python3 "$here/xtask/scripts/make_bitnet_tq2.py" --shapes smollm2-135m --type q4_1 \
        --vocab "$vocab" -o "$rnd" >"$out/make-random.log" 2>&1 || fail "random model (make-random.log)"
    peer=()
    [ -x "$lsrc/build/bin/llama-bench" ] &&
        peer=(--compare-llamacpp --llamacpp-bench "$lsrc/build/bin/llama-bench" --llamacpp-ngl 99)
    for kv in f16 int8; do
        "$bins/edgellm" bench --model "$rnd" --device cuda --kv-cache "$kv" -p 512 -g 128 -r 5 \
            "${peer[@]}" 2>"$out/bench-$kv.err" | tee "$out/bench-$kv.txt" || fail "bench $kv"
    done
    echo "== the same decode in the persistent kernel (EDGELLM_CUDA_PERSIST=1), with its phase profile"
    EDGELLM_CUDA_PERSIST=1 EDGELLM_CUDA_PROFILE=1 "$bins/edgellm" bench --model "$rnd" --device cuda \
        -p 512 -g 128 -r 5 2>&1 | tee "$out/bench-persistent.txt" || fail "bench persistent"
    echo "== the same decode with every kernel started after the one before it (EDGELLM_CUDA_OVERLAP=0)"
    EDGELLM_CUDA_OVERLAP=0 "$bins/edgellm" bench --model "$rnd" --device cuda -p 512 -g 128 -r 5 \
        2>&1 | tee "$out/bench-serial.txt" || fail "bench without overlapped launches"
fi

rm -rf "$work"
[ $status -eq 0 ] && echo "gpu-check: all passed" || echo "gpu-check: FAILED"
exit $status
