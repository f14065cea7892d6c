#!/usr/bin/env python3
"""Generates the dequantization fixture that pins the scalar kernels to the GGUF reference.

For each type, writes `<type>.blocks` (random blocks, raw bytes as GGUF stores them) and
`<type>.f32` (the values `gguf.quants.dequantize` from the `gguf` Python package, the format's
reference implementation, computes for them; little-endian f32). Scales include zero, negative,
subnormal and maximal f16 values; no NaN or infinity.

Run from this directory: `pip install gguf numpy && python3 gen_legacy_fixture.py`.
"""

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

BLOCKS = 256
SEED = 20261129

# (type, bytes per block, byte offsets of f16 fields to overwrite with chosen scales)
LEGACY = [
    (T.Q4_0, 18, [0]),
    (T.Q4_1, 20, [0, 2]),
    (T.Q5_0, 22, [0]),
    (T.Q5_1, 24, [0, 2]),
    (T.Q8_0, 34, [0]),
]


def scale_bits(rng, n):
    """f16 bit patterns: mostly ordinary scales, plus zero, subnormal, max and negative ones."""
    vals = (rng.standard_normal(n) * 0.05).astype(np.float16).view(np.uint16)
    kind = rng.integers(0, 10, n)
    vals = np.where(kind == 0, np.uint16(0x0000), vals)  # +0
    vals = np.where(kind == 1, np.uint16(0x8000), vals)  # -0
    sub = rng.integers(1, 0x400, n).astype(np.uint16)  # subnormal magnitudes
    vals = np.where(kind == 2, sub | (rng.integers(0, 2, n).astype(np.uint16) << 15), vals)
    vals = np.where(kind == 3, np.uint16(0x7BFF), vals)  # 65504
    vals = np.where(kind == 4, np.uint16(0xFBFF), vals)  # -65504
    return vals.astype("<u2")


def finite_bits16(rng, n, exp_mask):
    """Random 16-bit patterns whose exponent field (exp_mask) is not all ones."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bad = (bits & exp_mask) == exp_mask
    return np.where(bad, bits & ~np.uint16(0x4000), bits).astype("<u2")


def write(name, raw, expected):
    raw.tofile(f"{name}.blocks")
    np.asarray(expected, dtype="<f4").tofile(f"{name}.f32")


def main():
    rng = np.random.default_rng(SEED)
    for qtype, size, fields in LEGACY:
        blocks = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint16).astype(np.uint8)
        for off in fields:
            blocks[:, off : off + 2] = scale_bits(rng, BLOCKS).view(np.uint8).reshape(BLOCKS, 2)
        expected = dequantize(blocks.reshape(-1), qtype).reshape(-1)
        write(qtype.name, blocks.reshape(-1), expected)

    n = BLOCKS * 32
    f32 = np.concatenate(
        [
            (rng.standard_normal(n - 8) * 10.0).astype(np.float32),
            np.array([0.0, -0.0, 1e-45, -1e-45, 1.17e-38, 3.4e38, -3.4e38, 1.0], dtype=np.float32),
        ]
    ).astype("<f4")
    write("F32", f32.view(np.uint8), dequantize(f32.view(np.uint8), T.F32))

    f16 = finite_bits16(rng, n, np.uint16(0x7C00))
    write("F16", f16.view(np.uint8), dequantize(f16.view(np.uint8), T.F16))

    bf16 = finite_bits16(rng, n, np.uint16(0x7F80))
    write("BF16", bf16.view(np.uint8), dequantize(bf16.view(np.uint8), T.BF16))


if __name__ == "__main__":
    main()
