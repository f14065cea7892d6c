#!/usr/bin/env python3
"""Writes the K-quant dequantization fixtures that kernels/cpu/tests/kquants.rs checks against.

For each of Q4_K, Q5_K and Q6_K: 64 super-blocks of random bytes whose f16 scale fields are replaced
by finite values (a spread of magnitudes, both signs, zero, subnormals, the largest f16), and the
floats that gguf-py's reference dequantizer (`gguf.quants.dequantize`) gives for them.

Output, next to this script:
  kquants_<type>.blocks  the raw super-blocks, as GGUF stores them
  kquants_<type>.f32     the expected values, little-endian f32, 256 per super-block

Reproduce with `pip install gguf==0.19.0 numpy` and `python3 kquants_gen.py`; the output is
deterministic (fixed seed). gguf-py computes in float32 with one rounding per operation and no fused
multiply-add, in the same order as the scalar kernels, so the test compares bit for bit.

With `--real MODEL.gguf` it also writes real rows: the first and last row of `blk.0.ffn_down.weight`
(Q6_K) and of `blk.11.ffn_down.weight` (Q4_K), 4864 columns each, from Qwen2.5-Coder-0.5B-Instruct
Q4_K_M (Apache-2.0; file sha256 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32),
as kquants_real_<type>.blocks and .f32. That model has no Q5_K tensor.
"""

import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

N_BLOCKS = 64
HERE = pathlib.Path(__file__).resolve().parent

# (type, block bytes, byte offsets of the f16 scale fields)
LAYOUTS = [
    ("q4_k", T.Q4_K, 144, [0, 2]),
    ("q5_k", T.Q5_K, 176, [0, 2]),
    ("q6_k", T.Q6_K, 210, [208]),
]

# Scale values every type must see at least once, at fixed block positions.
SPECIAL = [0.0, -0.0, 65504.0, -65504.0, 6.0e-8, -6.0e-8, 1.0, -1.0]


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random finite f16 values: magnitude 2^U(-16, 2), random sign."""
    mag = np.exp2(rng.uniform(-16.0, 2.0, size=n))
    sign = np.where(rng.integers(0, 2, size=n) == 1, -1.0, 1.0)
    return (mag * sign).astype(np.float16)


def main() -> None:
    rng = np.random.default_rng(20261129)
    for name, qtype, block_bytes, offsets in LAYOUTS:
        blocks = rng.integers(0, 256, size=(N_BLOCKS, block_bytes), dtype=np.uint8)
        for k, off in enumerate(offsets):
            vals = sane_f16(rng, N_BLOCKS)
            # Special values on blocks 0..len(SPECIAL); a second field gets them shifted by 3
            # so that d and dmin are not always equal.
            for i, v in enumerate(SPECIAL):
                vals[(i + 3 * k) % len(SPECIAL)] = np.float16(v)
            blocks[:, off : off + 2] = vals.reshape(N_BLOCKS, 1).view(np.uint8).reshape(N_BLOCKS, 2)
        # One block with every 6-bit scale and min at its maximum, one with all quants at maximum.
        if name in ("q4_k", "q5_k"):
            blocks[8, 4:16] = 0xFF
            blocks[9, 16:] = 0xFF
        else:
            blocks[8, 192:208] = np.array([127] * 8 + [-128] * 8, dtype=np.int8).view(np.uint8)
            blocks[9, :192] = 0xFF
        expected = quants.dequantize(blocks.reshape(-1), qtype).astype("<f4")
        assert expected.shape == (N_BLOCKS * 256,), expected.shape
        assert np.all(np.isfinite(expected)), name
        (HERE / f"kquants_{name}.blocks").write_bytes(blocks.tobytes())
        (HERE / f"kquants_{name}.f32").write_bytes(expected.tobytes())
        print(f"{name}: {N_BLOCKS} blocks, {expected.size} values")


REAL_TENSORS = [("q6_k", "blk.0.ffn_down.weight", T.Q6_K), ("q4_k", "blk.11.ffn_down.weight", T.Q4_K)]
REAL_ROWS = [0, -1]


def real(model: str) -> None:
    from gguf import GGUFReader

    reader = GGUFReader(model)
    by_name = {t.name: t for t in reader.tensors}
    for name, tensor_name, qtype in REAL_TENSORS:
        t = by_name[tensor_name]
        assert t.tensor_type == qtype, (tensor_name, t.tensor_type)
        rows = np.ascontiguousarray(t.data[REAL_ROWS])
        expected = quants.dequantize(rows.reshape(-1), qtype).astype("<f4")
        (HERE / f"kquants_real_{name}.blocks").write_bytes(rows.tobytes())
        (HERE / f"kquants_real_{name}.f32").write_bytes(expected.tobytes())
        print(f"real {name}: {tensor_name} rows {REAL_ROWS}, {rows.shape[1]} bytes, {expected.size} values")


if __name__ == "__main__":
    main()
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        real(sys.argv[2])
