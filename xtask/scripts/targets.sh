#!/usr/bin/env bash
# The speed and latency targets of issues #3 and #4 in one batch, each row side by side with
# llama.cpp in one `edgellm bench` command: the table and latency runs of README "Numbers".
#
#   xtask/scripts/targets.sh --llama-bench PATH [--edgellm BIN] [--work DIR] [--rounds N]
#                            [--no-bitnet] [--no-table] [--no-latency]
#
# PATH is a native llama.cpp build's llama-bench (`cmake -B build -DGGML_NATIVE=ON && cmake
# --build build --target llama-bench` in a llama.cpp tree). BIN defaults to target/release/edgellm
# (`cargo build --release -p edgellm`). DIR (default /tmp/edgellm-targets) holds the images made
# from SmolLM2's Q4_1 file (`cargo xtask fetch-model smollm2-135m`) and the BitNet-shaped TQ2_0
# file (xtask/scripts/make_bitnet_tq2.py, 1.2 GB, made once). llama.cpp always runs the original
# Q4_1 file for the SmolLM2 rows.
#
# Rows: decode / prefill ratios per round and their medians, with the host's steal per round
# (ours / llama.cpp, percent). Latency: `-p 8 -g 512 -r 1 --rt`, one pinned thread and two, f16
# and int8 caches, two rounds; as root, real-time throttling is off for them and restored after.
set -euo pipefail

llama= edgellm=target/release/edgellm work=/tmp/edgellm-targets rounds=3 bitnet=1 table=1 latency=1
while [ $# -gt 0 ]; do
    case $1 in
        --llama-bench) llama=$2; shift 2 ;;
        --edgellm) edgellm=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --no-bitnet) bitnet=0; shift ;;
        --no-table) table=0; shift ;;
        --no-latency) latency=0; shift ;;
        *) echo "unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
    esac
done
[ -x "$llama" ] || { echo "--llama-bench PATH (a llama-bench binary) is required" >&2; exit 2; }
[ -x "$edgellm" ] || { echo "no $edgellm: cargo build --release -p edgellm" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$work"

q41=$(cd "$here" && cargo xtask fetch-model smollm2-135m)
for f in q4 ternary; do
    # Made again when the binary is newer (the converter may have changed).
    [ "$work/smollm2-$f.gguf" -nt "$edgellm" ] ||
        "$edgellm" convert "$q41" -o "$work/smollm2-$f.gguf" --format $f --head-format q4 --quiet
done
bitnet_file=$work/bitnet-2b-tq2_0.gguf
if [ $bitnet = 1 ] && [ ! -f "$bitnet_file" ]; then
    (cd "$here" && cargo xtask fetch-vocab >/dev/null)
    python3 "$here/xtask/scripts/make_bitnet_tq2.py" -o "$bitnet_file"
fi

echo "# $(date -u '+%F %H:%M') $("$edgellm" --version), llama.cpp $llama, load $(cut -d' ' -f1-3 /proc/loadavg)"
row() { # FILE THREADS BENCH-ARGS...
    local file=$1 t=$2
    shift 2
    "$edgellm" bench -m "$file" -t "$t" "$@" --rounds "$rounds" --json --compare-llamacpp \
        --llamacpp-bench "$llama" 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['llamacpp']; r = l['rounds']
pct = lambda x: '?' if x is None else '%.0f' % x
print('%-28s t%s  decode %s (%.2fx)  prefill %s (%.2fx)  ours %.1f/%.1f  llama.cpp %.1f/%.1f t/s  steal %s' % (
    '$(basename "$file")', $t,
    ' '.join('%.2f' % x['decode_ratio'] for x in r), l['decode_ratio_median'],
    ' '.join('%.2f' % x['prefill_ratio'] for x in r), l['prefill_ratio_median'],
    d['decode_tps'], d['prefill_tps'], l['decode_tps'], l['prefill_tps'],
    ' '.join(pct(x['edgellm_cpu_steal_pct']) + '/' + pct(x['cpu_steal_pct']) for x in r)))"
}
if [ $table = 1 ]; then
    for f in "$q41" "$work/smollm2-q4.gguf" "$work/smollm2-ternary.gguf"; do
        for t in 1 2; do row "$f" $t -p 64 -g 128 -r 2 --llamacpp-model "$q41"; done
    done
    if [ $bitnet = 1 ]; then
        for t in 1 2; do row "$bitnet_file" $t -p 64 -g 32 -r 2; done
    fi
fi

[ $latency = 1 ] || exit 0
throttle=$(sysctl -n kernel.sched_rt_runtime_us 2>/dev/null || echo)
group=/sys/fs/cgroup/cpu/cpu.rt_runtime_us
restore() {
    [ -w "$group" ] && echo "${throttle:-950000}" >"$group" 2>/dev/null || true
    [ -n "$throttle" ] && sysctl -q kernel.sched_rt_runtime_us="$throttle" 2>/dev/null || true
}
if [ "$(id -u)" = 0 ]; then
    trap restore EXIT
    sysctl -q kernel.sched_rt_runtime_us=-1 || true
    [ -w "$group" ] && echo -1 >"$group" 2>/dev/null || true
fi
echo "# latency, -p 8 -g 512 -r 1 --rt (targets: 1 thread p99/p50 <= 1.2 and max <= 2 p50; 2 threads p99/p50 <= 1.5)"
for round in 1 2; do
    for cfg in "1 1 f16" "1 1 int8" "2 0,1 f16" "2 0,1 int8"; do
        set -- $cfg
        "$edgellm" bench -m "$q41" --json -p 8 -g 512 -r 1 -t "$1" --cores "$2" --rt --kv-cache "$3" \
            --compare-llamacpp --llamacpp-bench "$llama" 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['token_latency_ms']; c = d['llamacpp']
p99, mx = l['p99'] / l['p50'], l['max'] / l['p50']
ok = (p99 <= 1.2 and mx <= 2) if $1 == 1 else p99 <= 1.5
print('t$1 %-4s  p50 %.2f ms  p99/p50 %.3f  max/p50 %.2f  %s  decode %.2fx llama.cpp  faults %d  allocs %d  realtime %s  steal %.1f%%' % (
    '$3', l['p50'], p99, mx, 'held' if ok else 'MISSED', d['decode_tps'] / c['decode_tps'],
    d['decode_page_faults'], d['decode_heap_allocations'], d['realtime'], d['cpu_steal_pct']))"
    done
done
