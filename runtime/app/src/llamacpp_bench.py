# Runs llama.cpp (the xllamacpp package: llama.cpp's own server engine) on a GGUF file and prints
# one JSON object per repetition with llama.cpp's own timings. Called by `edgellm bench
# --compare-llamacpp` with: MODEL THREADS PROMPT_TOKENS GEN_TOKENS REPS CONTEXT KV_TYPE (f16 or
# q8_0: llama.cpp's type for both the K and the V cache).
import json
import sys

try:
    import xllamacpp as xlc
except ImportError:
    sys.exit("llama.cpp comparison needs the xllamacpp package: python3 -m pip install xllamacpp")

model, threads, n_prompt, n_gen, reps, ctx = sys.argv[1], *map(int, sys.argv[2:7])
kv_type = sys.argv[7] if len(sys.argv) > 7 else "f16"
p = xlc.CommonParams()
p.model.path = model
p.n_ctx = ctx
p.n_parallel = 1
p.cpuparams.n_threads = threads
p.cpuparams_batch.n_threads = threads
if kv_type != "f16":
    # A quantized V cache needs flash attention, which llama.cpp then turns on by itself.
    p.cache_type_k = p.cache_type_v = getattr(xlc.ggml_type, "GGML_TYPE_" + kv_type.upper())
server = xlc.Server(p)
# Ordinary tokens, as llama-bench uses; the same ids every repetition, no prompt cache.
prompt = [100 + (i * 37) % 20000 for i in range(n_prompt)]
request = {
    "prompt": prompt,
    "n_predict": n_gen,
    "ignore_eos": True,
    "cache_prompt": False,
    "temperature": 0,
    "stream": False,
}
server.handle_completions(request)  # warm-up, not counted
for _ in range(reps):
    t = server.handle_completions(request)["timings"]
    print(json.dumps({"prefill_tps": t["prompt_per_second"], "decode_tps": t["predicted_per_second"],
                      "prompt_n": t["prompt_n"], "predicted_n": t["predicted_n"]}), flush=True)
