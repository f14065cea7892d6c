#!/usr/bin/env python3
"""Writes <vocab>.json: random and chat-like texts with the ids llama.cpp gives them.

Needs the `gguf`, `numpy` and `xllamacpp` packages, the ggml-vocab-*.gguf files in
$EDGELLM_VOCAB_DIR (default ~/.cache/edgellm/vocab) and SmolLM2 in $EDGELLM_MODEL_DIR (default
~/.cache/edgellm/models). llama.cpp's server loads only full models, so each vocabulary is put in a
tiny random llama model first. Run from this directory: python3 gen.py
Each case is [text, ids without special parsing, ids with special parsing]; no BOS is added.
"""
import json
import os
import random
import sys
import tempfile
import urllib.request

import gguf
import numpy as np
import xllamacpp

HOME = os.path.expanduser("~")
VOCAB_DIR = os.environ.get("EDGELLM_VOCAB_DIR", os.path.join(HOME, ".cache/edgellm/vocab"))
MODEL_DIR = os.environ.get("EDGELLM_MODEL_DIR", os.path.join(HOME, ".cache/edgellm/models"))
VOCABS = ["gpt-2", "llama-bpe", "qwen2", "starcoder", "llama-spm", "phi-3"]
PIECES = (
    list("abcxyzABCXYZ0123456789    \t\n\r.,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|")
    + ["'s", "'S", "'t", "'re", "'ve", "'m", "'ll", "'LL", "'d", "é", "É", "ß", "我", "想"]
    + ["ǅ", "ʰ", "\u0301", "½", "²", "٣", "\u00a0", "\u3000", "🦙", "😁", "\u200d", "～", "—"]
    + ["Hello", " world", "HTTPServer", "  ", "\n\n", " \n ", "2024", "3.14", "▁", "<0x41>"]
)


def tiny_model(src, dst):
    """A one-layer llama model carrying the tokenizer of `src`."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, "llama")
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].contents())
    e, f = 32, 64
    w.add_context_length(256)
    w.add_embedding_length(e)
    w.add_block_count(1)
    w.add_feed_forward_length(f)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(e // 4)
    if "general.name" in r.fields:
        w.add_name(r.fields["general.name"].contents())
    for field in r.fields.values():
        if field.name.startswith("tokenizer."):
            w.add_key_value(field.name, field.contents(), field.types[0],
                            field.types[1] if len(field.types) > 1 else None)
    rng = np.random.default_rng(0)

    def rand(name, shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    rand("token_embd.weight", (n_vocab, e))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(e, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(e, np.float32))
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        rand(f"blk.0.{n}.weight", (e, e))
    rand("blk.0.ffn_gate.weight", (f, e))
    rand("blk.0.ffn_up.weight", (f, e))
    rand("blk.0.ffn_down.weight", (e, f))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def specials(path):
    r = gguf.GGUFReader(path)
    toks = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    return [t for t, ty in zip(toks, types) if ty in (2, 3, 4)]


def texts(rng, special_texts):
    out = ["", " ", "\n", "Hello world", " Hello world", "ied 4 ½ months"]
    for _ in range(150):
        out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 20))))
    for _ in range(60):
        parts = []
        for _ in range(rng.randint(1, 5)):
            parts.append(rng.choice(special_texts))
            parts.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))))
        out.append("".join(parts))
    return out


def run(model_path, special_texts, rng):
    p = xllamacpp.CommonParams()
    p.model.path = model_path
    p.n_ctx = 256
    p.cpuparams.n_threads = 1
    server = xllamacpp.Server(p)
    url = server.listening_address.rstrip("/") + "/tokenize"

    def tok(content, parse_special):
        body = {"content": content, "add_special": False, "parse_special": parse_special}
        req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req))["tokens"]

    cases = [[t, tok(t, False), tok(t, True)] for t in texts(rng, special_texts)]
    del server
    return cases


def save(name, cases):
    with open(f"{name}.json", "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    rng = random.Random(20261129)
    with tempfile.TemporaryDirectory() as tmp:
        for name in VOCABS:
            src = os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf")
            dst = os.path.join(tmp, f"{name}.gguf")
            tiny_model(src, dst)
            save(name, run(dst, specials(src), rng))
            print(name, file=sys.stderr)
    model = os.path.join(MODEL_DIR, "SmolLM2-135M-Instruct.Q4_1.gguf")
    save("smollm2", run(model, specials(model), rng))


if __name__ == "__main__":
    main()
