#!/usr/bin/env python3
"""Write a llama-architecture GGUF in the shapes of BitNet b1.58 2B-4T (or SmolLM2-135M) with random weights.

Every linear layer of the blocks (attn_q/k/v/output, ffn_gate/up/down) is TQ2_0, token_embd and
output are Q8_0 (or F16 with --embd-type f16), the norms are F32 and equal to 1. The weights are
seeded normal noise (std 0.02), so the text it generates is gibberish; the file is for measuring
speed, with both EdgeLLM and llama.cpp reading the very same bytes. The tokenizer (Llama 3's,
128256 tokens) is copied from a vocabulary-only GGUF.

    pip install gguf numpy
    python3 xtask/scripts/make_bitnet_tq2.py -o /tmp/bitnet-2b-tq2_0.gguf

With `--shapes smollm2-135m --type q4_1 --vocab <a SmolLM2 GGUF>` it writes SmolLM2-135M's shapes
(tied output, no output.weight) with Q4_1 linear layers: the file the CUDA benchmarks run through
both engines. `--vocab-only` writes just the tokenizer of `--vocab` (1.8 MB for SmolLM2's),
small enough to send to a machine that takes few bytes, where the random file is then made from
it. (An EdgeLLM image does not do as `--vocab`: the gguf package refuses its own tensor types.)

Tensors are generated, quantized and written one at a time, so memory stays around the size of
the largest tensor (output: 128256 x 2560).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
except ImportError:
    sys.exit("needs the gguf package: python3 -m pip install gguf numpy")

SHAPES = {
    # BitNet b1.58 2B-4T
    "bitnet-2b": dict(DIM=2560, N_LAYERS=30, FFN=6912, N_HEADS=20, N_KV_HEADS=5, HEAD_DIM=128,
                      VOCAB=128256, ROPE_THETA=500000.0, RMS_EPS=1e-5, CONTEXT=4096, TIED=False),
    # SmolLM2-135M(-Instruct)
    "smollm2-135m": dict(DIM=576, N_LAYERS=30, FFN=1536, N_HEADS=9, N_KV_HEADS=3, HEAD_DIM=64,
                         VOCAB=49152, ROPE_THETA=100000.0, RMS_EPS=1e-5, CONTEXT=8192, TIED=True),
}
globals().update(SHAPES["bitnet-2b"])
LINEAR = None  # set in main

DEFAULT_VOCAB = Path.home() / ".cache/edgellm/vocab/ggml-vocab-llama-bpe.gguf"


def tensor_plan(embd_type, bitnet=False):
    """(name, rows, cols, type) in file order; rows = output features, cols = input features.

    With `bitnet`, the bitnet-b1.58 architecture's sub-norms (equal to 1) and tied embeddings."""
    kv = N_KV_HEADS * HEAD_DIM
    plan = [("token_embd.weight", VOCAB, DIM, embd_type)]
    for i in range(N_LAYERS):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", 1, DIM, QT.F32),
            (b + "attn_q.weight", N_HEADS * HEAD_DIM, DIM, QT.TQ2_0),
            (b + "attn_k.weight", kv, DIM, QT.TQ2_0),
            (b + "attn_v.weight", kv, DIM, QT.TQ2_0),
        ]
        if bitnet:
            plan += [(b + "attn_sub_norm.weight", 1, DIM, QT.F32)]
        plan += [
            (b + "attn_output.weight", DIM, N_HEADS * HEAD_DIM, QT.TQ2_0),
            (b + "ffn_norm.weight", 1, DIM, QT.F32),
            (b + "ffn_gate.weight", FFN, DIM, QT.TQ2_0),
            (b + "ffn_up.weight", FFN, DIM, QT.TQ2_0),
        ]
        if bitnet:
            plan += [(b + "ffn_sub_norm.weight", 1, FFN, QT.F32)]
        plan += [
            (b + "ffn_down.weight", DIM, FFN, QT.TQ2_0),
        ]
    plan += [("output_norm.weight", 1, DIM, QT.F32)]
    if not (TIED or bitnet):
        plan += [("output.weight", VOCAB, DIM, embd_type)]
    return [(n, r, c, LINEAR if t == QT.TQ2_0 else t) for n, r, c, t in plan]


def make_tensor(index, rows, cols, qtype, seed, std):
    """The tensor's bytes as written to the file (uint8 for quantized types)."""
    if qtype == QT.F32:  # norms
        return np.ones(cols, dtype=np.float32)
    rng = np.random.default_rng([seed, index])  # per tensor, so the result does not depend on order
    w = rng.standard_normal((rows, cols), dtype=np.float32)
    w *= std
    if qtype == QT.F16:
        return w.astype(np.float16)
    return quantize(w, qtype)


def nbytes(rows, cols, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert cols % block == 0, (cols, qtype)
    return rows * cols // block * size


class _Field:
    """A reader field's value, with gguf-py versions before `ReaderField.contents()` too."""

    def __init__(self, field):
        self.f = field

    def contents(self):
        f = self.f
        if hasattr(f, "contents"):
            return f.contents()
        T = gguf.GGUFValueType
        item = f.types[-1]
        if f.types[0] == T.ARRAY:
            if item == T.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [f.parts[i].tolist()[0] for i in f.data]
        if item == T.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]].tolist()[0]


def copy_tokenizer(writer, vocab_path):
    r = gguf.GGUFReader(vocab_path)
    f = {k: _Field(v) for k, v in r.fields.items()}
    tokens = f["tokenizer.ggml.tokens"].contents()
    if len(tokens) != VOCAB:
        sys.exit(f"{vocab_path}: {len(tokens)} tokens, expected {VOCAB}")
    writer.add_tokenizer_model(f["tokenizer.ggml.model"].contents())
    if "tokenizer.ggml.pre" in f:
        writer.add_tokenizer_pre(f["tokenizer.ggml.pre"].contents())
    writer.add_token_list(tokens)
    writer.add_token_types(f["tokenizer.ggml.token_type"].contents())
    if "tokenizer.ggml.merges" in f:
        writer.add_token_merges(f["tokenizer.ggml.merges"].contents())
    for key, add in [("tokenizer.ggml.bos_token_id", writer.add_bos_token_id),
                     ("tokenizer.ggml.eos_token_id", writer.add_eos_token_id)]:
        if key in f:
            add(int(f[key].contents()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default="/tmp/bitnet-2b-tq2_0.gguf")
    ap.add_argument("--vocab", default=str(DEFAULT_VOCAB), help="GGUF to copy the tokenizer from")
    ap.add_argument("--embd-type", choices=["q8_0", "f16"], default="q8_0",
                    help="type of token_embd and output (default q8_0)")
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="bitnet-2b")
    ap.add_argument("--type", choices=["tq2_0", "tq1_0", "q4_0", "q4_1", "q8_0"], default="tq2_0",
                    help="type of the linear layers (default tq2_0)")
    ap.add_argument("--arch", choices=["llama", "bitnet-b1.58"], default="llama",
                    help="llama (default; llama.cpp runs it) or bitnet.cpp's bitnet-b1.58 (sub-norms, "
                         "squared-ReLU gate, tied embeddings)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--vocab-only", action="store_true",
                    help="write only the tokenizer of --vocab (a vocabulary-only GGUF) and stop")
    args = ap.parse_args()
    global LINEAR
    globals().update(SHAPES[args.shapes])
    if args.vocab_only:
        w = gguf.GGUFWriter(args.output, args.arch)
        copy_tokenizer(w, args.vocab)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        print(f"wrote {args.output}: the tokenizer of {args.vocab}")
        return
    LINEAR = {"tq2_0": QT.TQ2_0, "tq1_0": QT.TQ1_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q8_0": QT.Q8_0}[args.type]
    embd_type = QT.Q8_0 if args.embd_type == "q8_0" else QT.F16

    t0 = time.time()
    w = gguf.GGUFWriter(args.output, args.arch)
    w.add_name(f"{args.shapes}-shapes-random-{args.type}")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(DIM)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(VOCAB)
    w.add_file_type({QT.TQ2_0: gguf.LlamaFileType.MOSTLY_TQ2_0, QT.TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0,
                     QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
                     QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}[LINEAR])
    copy_tokenizer(w, args.vocab)

    plan = tensor_plan(embd_type, bitnet=args.arch == "bitnet-b1.58")
    for name, rows, cols, qt in plan:
        n = nbytes(rows, cols, qt)
        if qt == QT.F32:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), n)
        elif qt == QT.F16:
            w.add_tensor_info(name, (rows, cols), np.dtype(np.float16), n)
        else:
            w.add_tensor_info(name, (rows, n // rows), np.dtype(np.uint8), n, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    total = sum(nbytes(r, c, q) for _, r, c, q in plan)
    done = 0
    for i, (name, rows, cols, qt) in enumerate(plan):
        data = make_tensor(i, rows, cols, qt, args.seed, args.std)
        w.write_tensor_data(data)
        done += data.nbytes
        if name.endswith("ffn_down.weight") or name in ("token_embd.weight", "output.weight"):
            print(f"[{time.time() - t0:6.1f}s] {done / 2**20:7.0f} / {total / 2**20:.0f} MiB  "
                  f"{name} {qt.name} {rows}x{cols}", flush=True)
    w.close()
    print(f"wrote {args.output}: {len(plan)} tensors, {total / 2**30:.2f} GiB in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
