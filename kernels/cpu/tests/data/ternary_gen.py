#!/usr/bin/env python3
"""Writes the TQ1_0 / TQ2_0 dequantization fixtures that kernels/cpu/tests/ternary.rs checks against.

For each type: 32 blocks of random bytes (every byte value is a valid TQ1_0 digit group; TQ2_0 also
gets the 2-bit code 3, which its reference dequantizer reads as +2) whose f16 scale `d` is replaced
by a finite value (a spread of magnitudes, both signs, zero, subnormals, the largest f16), plus one
block made by gguf-py's own quantizer, and the floats that gguf-py's reference dequantizer
(`gguf.quants.dequantize`) gives for them.

Output, next to this script:
  ternary_<type>.blocks  the raw blocks, as GGUF stores them
  ternary_<type>.f32     the expected values, little-endian f32, 256 per block

Reproduce with `pip install gguf==0.19.0 numpy` and `python3 ternary_gen.py`; the output is
deterministic (fixed seed). gguf-py computes `d * (q - 1)` in float32, one rounding, as the scalar
kernels do, so the test compares bit for bit.
"""

import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

N_BLOCKS = 32
HERE = pathlib.Path(__file__).resolve().parent

# (name, type, block bytes, byte offset of the f16 scale)
LAYOUTS = [
    ("tq1_0", T.TQ1_0, 54, 52),
    ("tq2_0", T.TQ2_0, 66, 64),
]

SPECIAL = [0.0, -0.0, 65504.0, -65504.0, 6.0e-8, -6.0e-8, 1.0, -1.0]


def main() -> None:
    rng = np.random.default_rng(20261130)
    for name, qtype, block_bytes, off in LAYOUTS:
        blocks = rng.integers(0, 256, size=(N_BLOCKS, block_bytes), dtype=np.uint8)
        mag = np.exp2(rng.uniform(-16.0, 2.0, size=N_BLOCKS))
        sign = np.where(rng.integers(0, 2, size=N_BLOCKS) == 1, -1.0, 1.0)
        vals = (mag * sign).astype(np.float16)
        vals[: len(SPECIAL)] = np.array(SPECIAL, dtype=np.float16)
        blocks[:, off : off + 2] = vals.reshape(N_BLOCKS, 1).view(np.uint8).reshape(N_BLOCKS, 2)
        # One block from the reference quantizer: ternary values times 0.75.
        tern = rng.integers(-1, 2, size=256).astype(np.float32) * np.float32(0.75)
        made = quants.quantize(tern, qtype).reshape(1, block_bytes)
        blocks = np.concatenate([blocks, made], axis=0)
        expected = quants.dequantize(blocks.reshape(-1), qtype).astype("<f4")
        assert expected.shape == ((N_BLOCKS + 1) * 256,), expected.shape
        assert np.all(np.isfinite(expected)), name
        assert np.array_equal(expected[-256:], tern), name
        (HERE / f"ternary_{name}.blocks").write_bytes(blocks.tobytes())
        (HERE / f"ternary_{name}.f32").write_bytes(expected.tobytes())
        print(f"{name}: {N_BLOCKS + 1} blocks, {expected.size} values")


if __name__ == "__main__":
    main()
