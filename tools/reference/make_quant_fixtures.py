#!/usr/bin/env python3
"""Reference for int8 weight-only quantization (issue 15, item 1; docs/QUANTIZATION.md).

Definition (symmetric, weight-only), in float32:
    scale = max|w| / 127 over each row (per output channel) or each group of 128 inputs of a row
    q     = clamp(torch.round(w / scale), -127, 127)   (torch.round: round half to even)
    w'    = q * scale
An all-zero row or group has scale 0 and q 0 (w / 0 would be NaN).

Cases (weights drawn with seeded generators; some rows scaled so values land on exact .5 ties):
    <case>.w       float32 [out, in]
    <case>.q       int8    [out, in]
    <case>.scale   float32 [out, groups]
    <case>.deq     float32 [out, in]

Pinned versions (asserted at start): torch 2.15.0, safetensors 0.8.0, numpy 2.4.6

Regenerate (from the repository root; CPU only, under a second):
    /work/venv/bin/python tools/reference/make_quant_fixtures.py
Writes Tests/Fixtures/quant/int8.safetensors.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import check_versions, generator, write_safetensors  # noqa: E402

check_versions({"torch": "2.15.0", "safetensors": "0.8.0", "numpy": "2.4.6"})


def quantize(w, group):
    out, n = w.shape
    g = n if group is None else group
    wg = w.reshape(out, n // g, g)
    scale = wg.abs().amax(dim=2) / 127
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(wg / safe.unsqueeze(2)).clamp(-127, 127)
    q = torch.where(scale.unsqueeze(2) == 0, torch.zeros_like(q), q).to(torch.int8)
    deq = (q.to(torch.float32) * scale.unsqueeze(2)).reshape(out, n)
    return q.reshape(out, n), scale, deq


tensors = {}
for name, shape, group in [("channel", (16, 96), None), ("group128", (8, 384), 128), ("ties", (4, 128), None)]:
    w = torch.randn(shape, generator=generator(name), dtype=torch.float32)
    if name == "channel":
        w[3] = 0                       # an all-zero row
        w[5] *= 1e-30                  # a tiny row
    if name == "ties":
        # integers and half-integers times 1/127 of the row maximum 127: w / scale lands on x.5
        k = torch.randint(-254, 255, shape, generator=generator(name + "k")).to(torch.float32) / 2
        k[:, 0] = 127
        w = k
    q, scale, deq = quantize(w, group)
    tensors[f"{name}.w"] = w
    tensors[f"{name}.q"] = q
    tensors[f"{name}.scale"] = scale
    tensors[f"{name}.deq"] = deq

out = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Fixtures", "quant", "int8.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
write_safetensors(out, tensors, {"definition": "scale=amax/127 per row or group; q=clamp(round_half_even(w/scale),-127,127)"})
print("wrote", os.path.normpath(out))
