#!/usr/bin/env python3
"""Reference for fp8 e4m3 W8A8 linear layers (issue 15, item 2; docs/QUANTIZATION.md).

Definition, in float32, with torch's own cast (`tensor.to(torch.float8_e4m3fn)`; in torch 2.15:
round to nearest even, saturating at +-448 (infinities included), NaN stays NaN), per ROW for the
weight (one scale per output channel) and for the activation (one scale per token):
    scale_w[o] = max_i |W[o, i]| / 448 (1 if the row is all zero);  Wq = (W / scale_w[:, None]).to(e4m3fn)
    scale_x[r] = max_i |x[r, i]| / 448 (same rule);                 xq = (x / scale_x[:, None]).to(e4m3fn)
    y          = (xq.float() @ Wq.float().T) * (scale_x[:, None] * scale_w[None, :]) + bias
                 (then rounded to the layer's dtype; cuBLASLt's FP8 GEMM with outer-vector scales
                 computes the same with fp32 accumulation)

Tensors written:
    cast.x     float32 [N]   values covering normals, subnormals, exact ties, 448, past 448, inf
    cast.code  uint8   [N]   torch's e4m3fn bit patterns of cast.x
    cast.back  float32 [N]   the codes widened back to float32
    rows.x     float32 [8, 96]  rows: random at three magnitudes, all zero, one outlier, exact code
                                values times a power of two, tiny values, a constant row
    rows.code  uint8   [8, 96]  their per-row codes; rows.scale float32 [8] their scales
    lin.x [3, 5, 64], lin.w [48, 64], lin.b [48]  float32 inputs of a linear layer
    lin.wq uint8 [48, 64], lin.sw float32 [48, 1]  the quantized weight and its per-channel scales
    lin.y  float32 [3, 5, 48]                      the emulated W8A8 output (fp32)
    lin.yb float32 [3, 5, 48]                      the same with x and b rounded to bf16 first (a bf16
                                                   layer's output before its one rounding)

Pinned versions (asserted at start): torch 2.15.0, safetensors 0.8.0, numpy 2.4.6

Regenerate (from the repository root; CPU only, under a second):
    /work/venv/bin/python tools/reference/make_fp8_fixtures.py
Writes Tests/Fixtures/quant/fp8.safetensors.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import check_versions, generator, write_safetensors  # noqa: E402

check_versions({"torch": "2.15.0", "safetensors": "0.8.0", "numpy": "2.4.6"})

E4M3 = torch.float8_e4m3fn


def row_scales(t):
    """One scale per row (the last axis reduced), kept as a column for broadcasting."""
    amax = t.abs().amax(dim=-1, keepdim=True)
    return torch.where(amax > 0, amax / 448, torch.ones_like(amax))


def codes(t):
    return t.to(E4M3).view(torch.uint8)


# every code's value, the midpoints between neighbours (ties), values around the ends of the range
grid = torch.arange(0, 256, dtype=torch.uint8).view(E4M3).to(torch.float32)
finite = grid[torch.isfinite(grid)]
pos = torch.sort(finite[finite >= 0]).values
mids = (pos[1:] + pos[:-1]) / 2
special = torch.tensor([float('inf'), 446, 448, 455, 456, 463.9, 464, 464.1, 479.9, 480, 500, 1e6, 2 ** -9, 2 ** -10,
                        3 * 2 ** -11, 2 ** -7 * 1.0625, 1e-30, 0.0], dtype=torch.float32)
rand = torch.randn(512, generator=generator("fp8cast"), dtype=torch.float32) * 40
x = torch.cat([finite, mids, -mids, special, -special, rand, rand * 1e-3])
tensors = {"cast.x": x, "cast.code": codes(x), "cast.back": x.to(E4M3).to(torch.float32)}

g = generator("fp8rows")
rx = torch.stack([
    torch.randn(96, generator=g) * 3,
    torch.randn(96, generator=g) * 1e-3,
    torch.randn(96, generator=g) * 200,
    torch.zeros(96),
    torch.cat([torch.randn(95, generator=g) * 0.1, torch.tensor([57.0])]),
    finite[torch.randperm(finite.numel(), generator=g)[:96]] * 0.25,
    torch.randn(96, generator=g) * 1e-30,
    torch.full((96,), -0.3),
]).to(torch.float32)
rs = row_scales(rx)
tensors.update({"rows.x": rx, "rows.code": codes(rx / rs), "rows.scale": rs.reshape(-1)})

lx = torch.randn(3, 5, 64, generator=generator("fp8x"), dtype=torch.float32)
lw = torch.randn(48, 64, generator=generator("fp8w"), dtype=torch.float32) * 0.1
lw[7] *= 20  # channels of different magnitudes: what per-channel scales are for
lw[9] = 0
lb = torch.randn(48, generator=generator("fp8b"), dtype=torch.float32)
sw = row_scales(lw)            # [48, 1]
sx = row_scales(lx)            # [3, 5, 1]
wq = (lw / sw).to(E4M3)
xq = (lx / sx).to(E4M3)
y = (xq.to(torch.float32) @ wq.to(torch.float32).T) * (sx * sw.reshape(1, 48)) + lb
# the same layer computing in bf16: the input rounded to bf16 first (other codes), output in fp32
xb = lx.to(torch.bfloat16).to(torch.float32)
sxb = row_scales(xb)
yb = ((xb / sxb).to(E4M3).to(torch.float32) @ wq.to(torch.float32).T) * (sxb * sw.reshape(1, 48)) + lb.to(torch.bfloat16).to(torch.float32)
tensors.update({"lin.x": lx, "lin.w": lw, "lin.b": lb, "lin.wq": wq.view(torch.uint8), "lin.sw": sw,
                "lin.y": y, "lin.yb": yb})

out = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Fixtures", "quant", "fp8.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
write_safetensors(out, tensors, {"definition": "scale=amax/448 per row (weights per output channel, activations per token); q=x/scale cast to float8_e4m3fn (torch)"})
print("wrote", os.path.normpath(out))
