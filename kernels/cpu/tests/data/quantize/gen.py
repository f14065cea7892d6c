"""Writes the quantizer fixture: f32 input rows and their Q8_0 / Q4_0 blocks as gguf-py quantizes them.

Run from this folder with `pip install gguf numpy`: python3 gen.py
"""
import numpy as np
from gguf.quants import quantize
from gguf import GGMLQuantizationType as T

rng = np.random.default_rng(20261129)
blocks = []
for scale in [1e-3, 0.02, 1.0, 37.0, 6e4]:
    blocks.append(rng.standard_normal((8, 32)).astype(np.float32) * np.float32(scale))
blocks.append(rng.uniform(-1, 1, (8, 32)).astype(np.float32))
edge = np.zeros((8, 32), dtype=np.float32)
edge[1] = np.arange(-16, 16, dtype=np.float32) + 0.5          # ties for Q8_0 (d = 15.5/127)
edge[2] = np.arange(32, dtype=np.float32) / 2 - 8              # -8 .. 7.5: ties for Q4_0
edge[2][0] = -8
edge[3] = 127.0; edge[3][::3] = -127.0; edge[3][5] = 0.5       # |max| on ties, first is positive
edge[4] = np.linspace(-1, 1, 32, dtype=np.float32); edge[4][7] = -1.0  # negative max first
edge[5][3] = 1e-8                                              # tiny: f16 scale underflows
edge[6] = np.float32(8.5) * (np.arange(32) % 2 * 2 - 1)       # alternating signs
edge[7] = rng.integers(-127, 128, 32).astype(np.float32)       # integers
blocks.append(edge)
x = np.concatenate(blocks).reshape(-1).astype(np.float32)
x.tofile("input.f32")
quantize(x.reshape(-1, 64), T.Q8_0).tofile("q8_0.bin")
quantize(x.reshape(-1, 64), T.Q4_0).tofile("q4_0.bin")
print(len(x), "values")
