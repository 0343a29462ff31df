#!/usr/bin/env python3
"""Reference fixtures for every CPU op of the tensor library (Sources/NewBieTensor).

Writes small safetensors files to Tests/Fixtures/ops/, read by Tests/NewBieTensorTests.
Each file holds many cases; see tools/reference/common.py for the layout (tensors
"<case>/<role>", case parameters as JSON in __metadata__["cases"]).

Pinned versions (asserted at start):
    torch 2.15.0 (CPU build is enough), diffusers 0.42.1, transformers 5.23.0,
    safetensors 0.8.0, numpy 2.4.6

Regenerate:
    python3 -m venv /tmp/newbie-ref
    /tmp/newbie-ref/bin/pip install torch==2.15.0 diffusers==0.42.1 transformers==5.23.0 \
        safetensors==0.8.0 numpy==2.4.6
    /tmp/newbie-ref/bin/python tools/reference/make_op_fixtures.py

Reference semantics. Our ops compute in Float32 and round once to the output dtype, so for
bf16/fp16 cases the inputs are stored in that dtype and the expected output is the torch op run on
those inputs upcast to float32, then `.to(dtype)`. Where a published module rounds differently
the module itself is the reference: RMSNorm (roundThenWeight) is diffusers'
`diffusers.models.normalization.RMSNorm` with a weight of the case's dtype; the Gemma style is
transformers' `Gemma3RMSNorm`; interleaved RoPE is diffusers' `apply_rotary_emb(use_real=False)`
(the Lumina-2 path); rotate-half RoPE is transformers' Gemma3 `apply_rotary_pos_emb`; the
asymmetric stride-2 convolution is diffusers' `Downsample2D(padding=0)`. Attention references
are `torch.nn.functional.scaled_dot_product_attention` in float32 with the KV heads expanded by
`repeat_interleave` and the visibility rules (padding, causal with bottom-right alignment, sliding
window) given as an explicit float mask. Seeds are fixed (derived from each case name).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator  # noqa: E402

PINS = {"torch": "2.15.0", "diffusers": "0.42.1", "transformers": "5.23.0",
        "safetensors": "0.8.0", "numpy": "2.4.6"}
check_versions(PINS)

from diffusers.models.downsampling import Downsample2D  # noqa: E402
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed  # noqa: E402
from diffusers.models.normalization import RMSNorm  # noqa: E402
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm, apply_rotary_pos_emb  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "Tests", "Fixtures", "ops")
SCRIPT = "tools/reference/make_op_fixtures.py"

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def new_file(name):
    return FixtureFile(os.path.join(OUT_DIR, name + ".safetensors"), SCRIPT, PINS)


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float32) * scale


def rnd(t, dt):
    """Rounds a float32 tensor to the case dtype (the stored input)."""
    return t.to(DTYPES[dt])


def up(t):
    return t.float()


# ---------------------------------------------------------------------------------------------
def make_linear():
    f = new_file("linear")
    shapes = [  # name, x shape, out features, bias
        ("bias_3d", (2, 5, 37), 19, True),
        ("nobias_2d", (7, 33), 13, False),
        ("single_out", (3, 17), 1, True),
        ("wide", (3, 100), 40, True),
    ]
    for dt in DTYPES:
        for name, xs, n, has_bias in shapes:
            case = f"{name}.{dt}"
            g = generator(case)
            k = xs[-1]
            x = rnd(randn(g, *xs), dt)
            w = rnd(randn(g, n, k, scale=1 / math.sqrt(k)), dt)
            b = rnd(randn(g, n), dt) if has_bias else None
            out = F.linear(up(x), up(w), up(b) if b is not None else None).to(DTYPES[dt])
            t = {"x": x, "w": w, "out": out}
            if b is not None:
                t["b"] = b
            f.add_case(case, t, dtype=dt, bias=has_bias)
    # float32 activations with reduced-precision weights (weights widened to float32)
    for wdt in ("bf16", "f16"):
        case = f"mixed_w_{wdt}.f32"
        g = generator(case)
        x = randn(g, 4, 6, 40)
        w = rnd(randn(g, 24, 40, scale=0.2), wdt)
        b = rnd(randn(g, 24), wdt)
        out = F.linear(x, up(w), up(b))
        f.add_case(case, {"x": x, "w": w, "b": b, "out": out}, dtype="f32", bias=True)
    return f


def make_matmul():
    f = new_file("matmul")
    shapes = [  # name, a shape, b shape, transposeB
        ("batched", (3, 5, 7), (3, 7, 9), False),
        ("batched_tb", (2, 6, 11), (2, 13, 11), True),
        ("rank4", (2, 3, 4, 8), (2, 3, 8, 5), False),
        ("rank4_tb", (2, 3, 17, 8), (2, 3, 19, 8), True),
        ("single", (1, 1, 31), (1, 31, 1), False),
    ]
    for dt in DTYPES:
        for name, ash, bsh, tb in shapes:
            case = f"{name}.{dt}"
            g = generator(case)
            a = rnd(randn(g, *ash), dt)
            b = rnd(randn(g, *bsh), dt)
            bb = up(b).transpose(-1, -2) if tb else up(b)
            out = torch.matmul(up(a), bb).to(DTYPES[dt])
            f.add_case(case, {"a": a, "b": b, "out": out}, dtype=dt, transposeB=tb)
    return f


BINARY_OPS = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "maximum": torch.maximum, "minimum": torch.minimum,
}


def make_binary():
    f = new_file("binary")
    # name, stored a shape, stored b shape, a view ({"expand": shape} / {"permute": order} / None)
    layouts = [
        ("same", (2, 3, 10), (2, 3, 10), None),
        ("bcast_mid", (2, 5, 16), (2, 1, 16), None),
        ("bcast_mid_rev", (2, 1, 16), (2, 5, 16), None),
        ("scalar_like", (3, 4, 5), (1,), None),
        ("scalar_like3", (3, 4, 5), (1, 1, 1), None),
        ("bcast_both", (4, 1, 6), (1, 3, 6), None),
        ("fewer_dims", (2, 3, 4), (4,), None),
        ("expanded_view", (2, 1, 8), (2, 5, 8), {"expand": [2, 5, 8]}),
        ("permuted_view", (3, 4, 5), (5, 3, 4), {"permute": [2, 0, 1]}),
    ]
    for dt in DTYPES:
        for lname, ash, bsh, view in layouts:
            for op, fn in BINARY_OPS.items():
                case = f"{lname}.{op}.{dt}"
                g = generator(case)
                a = rnd(randn(g, *ash), dt)
                b = randn(g, *bsh)
                if op == "div":  # keep denominators away from zero
                    b = torch.sign(b) * (b.abs() + 0.5)
                b = rnd(b, dt)
                av = up(a)
                if view and "expand" in view:
                    av = av.expand(*view["expand"])
                if view and "permute" in view:
                    av = av.permute(*view["permute"])
                out = fn(av, up(b)).to(DTYPES[dt])
                params = {"dtype": dt, "op": op}
                if view:
                    params.update(view)
                f.add_case(case, {"a": a, "b": b, "out": out}, **params)
        if dt == "bf16":  # [256, 1] x [1, 128]: 256 strided rows, split over worker threads
            case = f"outer.mul.{dt}"
            g = generator(case)
            a = rnd(randn(g, 256, 1), dt)
            b = rnd(randn(g, 1, 128), dt)
            f.add_case(case, {"a": a, "b": b, "out": (up(a) * up(b)).to(DTYPES[dt])}, dtype=dt, op="mul")
        if dt != "f32":
            # reduced-precision activations times a float32 modulation (result keeps a's dtype)
            for op in ("mul", "add"):
                case = f"mixed_b_f32.{op}.{dt}"
                g = generator(case)
                a = rnd(randn(g, 2, 6, 12), dt)
                b = randn(g, 2, 1, 12)
                out = BINARY_OPS[op](up(a), b).to(DTYPES[dt])
                f.add_case(case, {"a": a, "b": b, "out": out}, dtype=dt, op=op)
    return f


def make_unary():
    f = new_file("unary")
    ops = {
        # name: (torch reference on float32, input kind, params)
        "silu": (F.silu, "any", {}),
        "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), "any", {}),
        "gelu_erf": (lambda x: F.gelu(x, approximate="none"), "any", {}),
        "tanh": (torch.tanh, "any", {}),
        "exp": (torch.exp, "any", {}),
        "sigmoid": (torch.sigmoid, "any", {}),
        "sqrt": (torch.sqrt, "positive", {}),
        "rsqrt": (torch.rsqrt, "positive", {}),
        "log": (torch.log, "positive", {}),
        "square": (torch.square, "any", {}),
        "neg": (torch.neg, "any", {}),
        "abs": (torch.abs, "any", {}),
        "relu": (F.relu, "any", {}),
        "identity": (lambda x: x, "any", {}),
        "scaled": (lambda x: x * 0.37, "any", {"s": 0.37}),
        "affine": (lambda x: x * 1.7 + (-0.25), "any", {"scale": 1.7, "shift": -0.25}),
        "clamp": (lambda x: torch.clamp(x, -0.8, 1.1), "any", {"lo": -0.8, "hi": 1.1}),
    }
    for dt in DTYPES:
        for op, (fn, kind, params) in ops.items():
            case = f"{op}.wide_range.{dt}"
            g = generator(case)
            x = torch.rand(4, 40, generator=g) * 60 - 30
            x = torch.where((x.abs() > 10.0) & (x.abs() < 12.0), x * 0.5, x)  # fp16 exp overflows near 11.09
            x[0, :6] = torch.tensor([0.0, -0.0, 30.0, -30.0, 88.0, -88.0]) if op != "exp" else torch.tensor([0.0, -0.0, 3.0, -3.0, 8.0, -8.0])
            if kind == "positive":
                x = x.abs() + 1e-3
            x = rnd(x, dt)
            out = fn(up(x)).to(DTYPES[dt])
            f.add_case(case, {"x": x, "out": out}, dtype=dt, op=op, transpose=False, **params)
            for layout in ("plain", "transposed"):
                case = f"{op}.{layout}.{dt}"
                g = generator(case)
                x = torch.clamp(randn(g, 6, 35, scale=2.0), -5, 5)
                if kind == "positive":
                    x = x.abs() + 0.05
                x = rnd(x, dt)
                xv = up(x).t() if layout == "transposed" else up(x)
                out = fn(xv).to(DTYPES[dt])
                f.add_case(case, {"x": x, "out": out}, dtype=dt, op=op, transpose=layout == "transposed", **params)
    return f


def make_reduce():
    f = new_file("reduce")
    refs = {
        "sum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
        "mean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
        "max": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
        "min": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
        "sumSquares": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
    }
    axes_list = [([1], False), ([-1], False), ([0], True), ([1, 2], False), ([2, 3], True), ([0, 1, 2, 3], False)]
    for dt in DTYPES:
        for op, fn in refs.items():
            for axes, keep in axes_list:
                case = f"{op}.{'_'.join(str(a) for a in axes)}{'.keep' if keep else ''}.{dt}"
                g = generator(case)
                x = rnd(randn(g, 3, 4, 5, 6) + 0.3, dt)
                out = fn(up(x), tuple(axes), keep).to(DTYPES[dt])
                f.add_case(case, {"x": x, "out": out}, dtype=dt, op=op, axes=axes, keepDims=keep)
        # enough outputs (n * outputs >= 8192) to be split over two worker threads
        for op in {"f32": ("sum",), "bf16": ("max",), "f16": ("mean",)}[dt]:
            case = f"{op}.big.{dt}"
            g = generator(case)
            x = rnd(randn(g, 2, 64, 64), dt)
            out = refs[op](up(x), (1,), False).to(DTYPES[dt])
            f.add_case(case, {"x": x, "out": out}, dtype=dt, op=op, axes=[1], keepDims=False)
    return f


def make_softmax():
    f = new_file("softmax")
    for dt in DTYPES:
        for name, shape, scale, neg_inf in [("small", (3, 7, 33), 1.0, False),
                                            ("long_rows", (2, 1000), 4.0, False),
                                            ("large_logits", (4, 50), 30.0, False),
                                            ("masked", (3, 40), 2.0, True)]:
            case = f"{name}.{dt}"
            g = generator(case)
            x = randn(g, *shape, scale=scale)
            if neg_inf:  # some masked logits per row (never a whole row)
                x[:, 5:12] = float("-inf")
                x[1, 30:] = float("-inf")
            x = rnd(x, dt)
            out = torch.softmax(up(x), dim=-1).to(DTYPES[dt])
            f.add_case(case, {"x": x, "out": out}, dtype=dt)
    return f


def make_norm():
    f = new_file("norm")
    with torch.no_grad():
        for dt in DTYPES:
            tdt = DTYPES[dt]
            # RMSNorm as Lumina-2 / NewBie's DiT uses it (diffusers RMSNorm), weight in the case dtype
            for name, shape, eps, affine in [("rms_2304", (1, 2304), 1e-6, True),
                                             ("rms_2560", (1, 2560), 1e-5, True),
                                             ("rms_3d", (2, 3, 96), 1e-6, True),
                                             ("rms_noweight", (4, 64), 1e-6, False)]:
                case = f"{name}.{dt}"
                g = generator(case)
                x = rnd(randn(g, *shape, scale=1.5), dt)
                m = RMSNorm(shape[-1], eps=eps, elementwise_affine=affine)
                t = {"x": x}
                if affine:
                    w = rnd(randn(g, shape[-1], scale=0.3) + 1.0, dt)
                    m.weight.data = w.clone()
                    t["w"] = w
                out = m(x)
                assert out.dtype == tdt
                t["out"] = out
                f.add_case(case, t, dtype=dt, op="rms", style="roundThenWeight", eps=eps, weight=affine)
            # Gemma3RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w) in float32, cast once
            for name, shape, eps in [("gemma_2304", (1, 2304), 1e-6), ("gemma_2560", (1, 2560), 1e-6),
                                     ("gemma_small", (5, 32), 1e-6)]:
                case = f"{name}.{dt}"
                g = generator(case)
                x = rnd(randn(g, *shape, scale=2.0), dt)
                w = rnd(randn(g, shape[-1], scale=0.2), dt)
                m = Gemma3RMSNorm(shape[-1], eps=eps).to(tdt)
                m.weight.data = w.clone()
                out = m(x)
                assert out.dtype == tdt
                f.add_case(case, {"x": x, "w": w, "out": out}, dtype=dt, op="rms", style="gemmaOnePlusWeight",
                           eps=eps, weight=True)
            if dt == "f32":
                # float32 activations, bf16 weight: diffusers casts the normalised value to bf16 and returns bf16;
                # our op returns float32 (the input's dtype), which must round to exactly that bf16 result
                case = "rms_mixed_w_bf16.f32"
                g = generator(case)
                x = randn(g, 3, 256)
                m = RMSNorm(256, eps=1e-6)
                w = rnd(randn(g, 256, scale=0.3) + 1.0, "bf16")
                m.weight.data = w.clone()
                out = m(x)
                assert out.dtype == torch.bfloat16
                f.add_case(case, {"x": x, "w": w, "out": out}, dtype=dt, op="rms", style="roundThenWeight", eps=1e-6,
                           weight=True, compareAfterRoundingTo="bf16")
                # Gemma keeps the input's dtype: float32 out, weight widened
                case = "gemma_mixed_w_bf16.f32"
                g = generator(case)
                x = randn(g, 3, 256, scale=2.0)
                w = rnd(randn(g, 256, scale=0.2), "bf16")
                m = Gemma3RMSNorm(256, eps=1e-6).to(torch.bfloat16)
                m.weight.data = w.clone()
                out = m(x)
                assert out.dtype == torch.float32
                f.add_case(case, {"x": x, "w": w, "out": out}, dtype=dt, op="rms", style="gemmaOnePlusWeight", eps=1e-6,
                           weight=True)
            # LayerNorm with and without affine parameters
            for name, shape, eps, affine, offset in [("ln_affine", (3, 5, 96), 1e-6, True, 0.0),
                                                     ("ln_plain", (2, 768), 1e-6, False, 0.0),
                                                     ("ln_offset", (3, 128), 1e-5, True, 50.0)]:
                case = f"{name}.{dt}"
                g = generator(case)
                x = rnd(randn(g, *shape) + offset, dt)
                t = {"x": x}
                w = b = None
                if affine:
                    w = rnd(randn(g, shape[-1], scale=0.5) + 1, dt)
                    b = rnd(randn(g, shape[-1], scale=0.5), dt)
                    t["w"], t["b"] = w, b
                out = F.layer_norm(up(x), (shape[-1],), up(w) if affine else None, up(b) if affine else None, eps)
                t["out"] = out.to(tdt)
                f.add_case(case, t, dtype=dt, op="layer", eps=eps, weight=affine)
            # GroupNorm (32 groups, odd spatial sizes)
            for name, shape, groups, eps, affine in [("gn_affine", (1, 64, 5, 7), 32, 1e-6, True),
                                                     ("gn_plain", (1, 96, 3, 3), 32, 1e-6, False),
                                                     ("gn_rank3", (2, 32, 9), 32, 1e-5, True)]:
                case = f"{name}.{dt}"
                g = generator(case)
                x = rnd(randn(g, *shape, scale=2.0) + 0.5, dt)
                t = {"x": x}
                w = b = None
                if affine:
                    w = rnd(randn(g, shape[1], scale=0.5) + 1, dt)
                    b = rnd(randn(g, shape[1], scale=0.5), dt)
                    t["w"], t["b"] = w, b
                out = F.group_norm(up(x), groups, up(w) if affine else None, up(b) if affine else None, eps)
                t["out"] = out.to(tdt)
                f.add_case(case, t, dtype=dt, op="group", groups=groups, eps=eps, weight=affine)
    return f


def lumina_freqs(pos_ids, axes_dims, theta=10000.0):
    """Per-sample complex tables [B, L, D/2] from 3-axis position ids [B, L, 3], one 1-D table per axis
    (diffusers get_1d_rotary_pos_embed), concatenated along the channel axis as Lumina-2 does."""
    parts = []
    for axis, d in enumerate(axes_dims):
        per_b = []
        for bi in range(pos_ids.shape[0]):
            pos = pos_ids[bi, :, axis].to(torch.float32)
            per_b.append(get_1d_rotary_pos_embed(d, pos, theta=theta, use_real=False))  # [L, d/2] complex
        parts.append(torch.stack(per_b))
    return torch.cat(parts, dim=-1)


def make_rope():
    f = new_file("rope")
    with torch.no_grad():
        for dt in DTYPES:
            tdt = DTYPES[dt]
            # interleaved, per-sample tables from Lumina-style 3-axis position ids:
            # caption tokens (t, 0, 0) then a 2x3 image grid (cap_len, row, col)
            case = f"interleaved_batch.{dt}"
            g = generator(case)
            b, l, h, d = 2, 12, 3, 16
            pos = torch.zeros(b, l, 3, dtype=torch.int64)
            for bi, cap_len in enumerate((6, 4)):
                for t_ in range(cap_len):
                    pos[bi, t_] = torch.tensor([t_, 0, 0])
                for k in range(l - cap_len):
                    pos[bi, cap_len + k] = torch.tensor([cap_len, k // 3, k % 3])
            freqs = lumina_freqs(pos, (8, 4, 4))
            x = rnd(randn(g, b, l, h, d), dt)
            out = apply_rotary_emb(x, freqs, use_real=False)
            assert out.dtype == tdt
            f.add_case(case, {"x": x, "cos": freqs.real.contiguous(), "sin": freqs.imag.contiguous(), "out": out},
                       dtype=dt, layout="interleaved")
            # interleaved, one table shared by the batch, random angles
            case = f"interleaved_shared.{dt}"
            g = generator(case)
            b, l, h, d = 3, 7, 2, 8
            ang = torch.rand(1, l, d // 2, generator=g) * 20 - 10
            freqs = torch.polar(torch.ones_like(ang), ang)
            x = rnd(randn(g, b, l, h, d), dt)
            out = apply_rotary_emb(x, freqs, use_real=False)
            f.add_case(case, {"x": x, "cos": freqs.real.contiguous(), "sin": freqs.imag.contiguous(), "out": out},
                       dtype=dt, layout="interleaved")
            # rotate-half (Gemma / HF): cos/sin [B, L, D] with duplicated halves, per-sample position offsets
            for name, b, l, h, d, per_sample in [("rotate_half_batch", 2, 9, 2, 32, True),
                                                 ("rotate_half_shared", 2, 5, 2, 16, False)]:
                case = f"{name}.{dt}"
                g = generator(case)
                inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
                offsets = torch.tensor([0, 3])[:b] if per_sample else torch.zeros(1, dtype=torch.int64)
                pos = (torch.arange(l)[None, :] + offsets[:, None]).float()  # [B or 1, L]
                fr = pos[:, :, None] * inv_freq[None, None, :]
                emb = torch.cat((fr, fr), dim=-1)
                cos, sin = emb.cos(), emb.sin()
                x = rnd(randn(g, b, l, h, d), dt)
                q = up(x).transpose(1, 2)  # [B, H, L, D]
                cos_b = cos.expand(b, l, d)
                sin_b = sin.expand(b, l, d)
                q_out, _ = apply_rotary_pos_emb(q, q, cos_b, sin_b, unsqueeze_dim=1)
                out = q_out.transpose(1, 2).to(tdt)
                f.add_case(case, {"x": x, "cos": cos[..., : d // 2].contiguous(), "sin": sin[..., : d // 2].contiguous(),
                                  "out": out}, dtype=dt, layout="rotateHalf")
    return f


def attention_reference(q, k, v, scale, causal, window, keep, bias):
    """q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] float32; keep [B, Lk] bool or None; bias 4-D or None."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    kx = k.repeat_interleave(group, dim=2).transpose(1, 2)
    vx = v.repeat_interleave(group, dim=2).transpose(1, 2)
    qx = q.transpose(1, 2)
    visible = torch.ones(b, 1, lq, lk, dtype=torch.bool)
    i = torch.arange(lq)[:, None]
    j = torch.arange(lk)[None, :]
    if causal:
        last = i + (lk - lq)
        vis = j <= last
        if window is not None:
            vis = vis & (last - j < window)
        visible = visible & vis[None, None]
    if keep is not None:
        visible = visible & keep[:, None, None, :]
    assert visible.any(dim=-1).all(), "a query row would have no visible key"
    mask = torch.zeros(b, 1, lq, lk).masked_fill(~visible, float("-inf"))
    if bias is not None:
        mask = mask + bias
    out = F.scaled_dot_product_attention(qx, kx, vx, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


def make_attention():
    f = new_file("attention")
    # name, B, Lq, Lk, Hq, Hkv, D, causal, window, real lengths (None = no mask), bias shape, scale
    cases = [
        ("gqa_d96", 1, 8, 8, 6, 2, 96, False, None, None, None, None),
        ("gqa_pad", 3, 13, 13, 4, 2, 8, False, None, (13, 9, 4), None, None),
        ("causal", 2, 17, 17, 4, 1, 8, True, None, None, None, None),
        ("causal_window", 1, 24, 24, 2, 2, 16, True, 5, None, None, None),
        ("causal_shift", 2, 7, 19, 6, 2, 8, True, None, None, None, None),
        ("causal_pad", 2, 15, 15, 2, 1, 8, True, None, (15, 10), None, None),
        ("bias_heads", 2, 11, 11, 4, 4, 8, False, None, None, (1, 4, 11, 11), None),
        ("bias_batch_pad", 2, 11, 11, 4, 2, 8, False, None, (11, 6), (2, 1, 11, 11), None),
        ("bias_shared_causal", 2, 6, 9, 2, 1, 8, True, None, None, (1, 1, 6, 9), None),
        ("q1_window", 2, 1, 40, 6, 2, 8, True, 16, None, None, None),
        ("q1_pad", 3, 1, 9, 2, 1, 8, False, None, (9, 5, 1), None, None),
        ("scale", 1, 9, 12, 3, 1, 8, False, None, None, None, 0.3),
        ("long_pad", 3, 150, 600, 2, 1, 4, False, None, (600, 530, 500), None, None),
        ("long_causal_window", 1, 150, 600, 2, 1, 4, True, 200, None, None, None),
    ]
    with torch.no_grad():
        for dt in DTYPES:
            tdt = DTYPES[dt]
            for name, b, lq, lk, hq, hkv, d, causal, window, lens, bias_shape, scale in cases:
                case = f"{name}.{dt}"
                g = generator(case)
                q = rnd(randn(g, b, lq, hq, d), dt)
                k = rnd(randn(g, b, lk, hkv, d), dt)
                v = rnd(randn(g, b, lk, hkv, d), dt)
                t = {"q": q, "k": k, "v": v}
                keep = None
                if lens is not None:
                    keep = torch.arange(lk)[None, :] < torch.tensor(lens)[:, None]
                    t["mask"] = keep.to(torch.int32)
                bias = None
                if bias_shape is not None:
                    bias = rnd(randn(g, *bias_shape), dt)
                    t["bias"] = bias
                out = attention_reference(up(q), up(k), up(v), scale, causal, window, keep,
                                          up(bias) if bias is not None else None)
                t["out"] = out.to(tdt)
                params = {"dtype": dt, "causal": causal}
                if window is not None:
                    params["window"] = window
                if scale is not None:
                    params["scale"] = scale
                f.add_case(case, t, **params)
    return f


def make_conv():
    f = new_file("conv")
    # name, x shape, Cout, kernel, stride, padding, bias
    shapes = [
        ("k3p1", (2, 5, 9, 7), 6, 3, 1, 1, True),
        ("k3p1_wide", (1, 32, 6, 5), 16, 3, 1, 1, True),
        ("k1", (1, 8, 5, 6), 3, 1, 1, 0, True),
        ("k1_nobias", (2, 8, 3, 5), 4, 1, 1, 0, False),
        ("k3_nopad", (1, 3, 7, 6), 2, 3, 1, 0, True),
        ("k3s2p1", (1, 3, 8, 9), 4, 3, 2, 1, False),
    ]
    with torch.no_grad():
        for dt in DTYPES:
            tdt = DTYPES[dt]
            for name, xs, cout, ks, stride, pad, has_bias in shapes:
                case = f"{name}.{dt}"
                g = generator(case)
                cin = xs[1]
                x = rnd(randn(g, *xs), dt)
                w = rnd(randn(g, cout, cin, ks, ks, scale=1 / math.sqrt(cin * ks * ks)), dt)
                b = rnd(randn(g, cout), dt) if has_bias else None
                out = F.conv2d(up(x), up(w), up(b) if b is not None else None, stride=stride, padding=pad).to(tdt)
                t = {"x": x, "w": w, "out": out}
                if b is not None:
                    t["b"] = b
                f.add_case(case, t, dtype=dt, stride=stride, padding=pad, bias=has_bias)
            if dt == "f32":
                # wide enough that the im2col matrix (Cin*9 x W columns per output row) is split into bands of
                # output rows; the 1M-element input is a formula both sides evaluate exactly, so only the
                # weights and the output are stored
                case = "k3p1_bands.f32"
                g = generator(case)
                cin, hh, ww, cout = 512, 2, 1000, 2
                c_i = torch.arange(cin)[:, None, None]
                h_i = torch.arange(hh)[None, :, None]
                w_i = torch.arange(ww)[None, None, :]
                x = (((c_i * 7 + h_i * 13 + w_i * 3) % 17) - 8).float().div(8.0)[None]
                w = randn(g, cout, cin, 3, 3, scale=1 / math.sqrt(cin * 9))
                b = randn(g, cout)
                out = F.conv2d(x, w, b, stride=1, padding=1)
                f.add_case(case, {"w": w, "b": b, "out": out}, dtype=dt, stride=1, padding=1, bias=True,
                           inputFormula="((c*7 + h*13 + w*3) mod 17 - 8) / 8", inputShape=[1, cin, hh, ww])
            # diffusers Downsample2D(padding=0): pad right/bottom by one, 3x3 stride 2 (odd H/W)
            for name, xs in [("downsample_odd", (1, 4, 9, 7)), ("downsample_even", (2, 3, 8, 6))]:
                case = f"{name}.{dt}"
                g = generator(case)
                c = xs[1]
                m = Downsample2D(c, use_conv=True, out_channels=c, padding=0)
                w = rnd(randn(g, c, c, 3, 3, scale=0.3), dt)
                b = rnd(randn(g, c), dt)
                m.conv.weight.data = up(w)
                m.conv.bias.data = up(b)
                x = rnd(randn(g, *xs), dt)
                out = m(up(x)).to(tdt)
                f.add_case(case, {"x": x, "w": w, "b": b, "out": out}, dtype=dt, downsampleAsymmetric=True, bias=True)
    return f


def make_upsample():
    f = new_file("upsample")
    for dt in DTYPES:
        for name, xs in [("nchw", (2, 3, 4, 5)), ("tiny", (1, 1, 1, 3)), ("odd", (1, 2, 3, 7))]:
            case = f"{name}.{dt}"
            g = generator(case)
            x = rnd(randn(g, *xs), dt)
            out = F.interpolate(up(x), scale_factor=2.0, mode="nearest").to(DTYPES[dt])
            f.add_case(case, {"x": x, "out": out}, dtype=dt)
    return f


def make_embedding():
    f = new_file("embedding")
    for dt in DTYPES:
        for idt in ("i32", "i64"):
            case = f"gather_{idt}.{dt}"
            g = generator(case)
            table = rnd(randn(g, 50, 24), dt)
            ids = torch.randint(0, 50, (2, 7), generator=g)
            ids[0, 0], ids[1, -1] = 0, 49
            ids = ids.to(torch.int32 if idt == "i32" else torch.int64)
            out = F.embedding(ids.long(), up(table)).to(DTYPES[dt])
            f.add_case(case, {"table": table, "ids": ids, "out": out}, dtype=dt)
        if dt != "f32":  # reduced-precision table gathered into float32 rows
            case = f"gather_to_f32.{dt}"
            g = generator(case)
            table = rnd(randn(g, 30, 16), dt)
            ids = torch.randint(0, 30, (9,), generator=g).to(torch.int32)
            out = F.embedding(ids.long(), up(table))
            f.add_case(case, {"table": table, "ids": ids, "out": out}, dtype=dt, outDtype="f32")
    return f


def make_views():
    f = new_file("views")
    for dt in DTYPES:
        g = generator(f"views.{dt}")
        x = rnd(randn(g, 2, 3, 4, 5), dt)
        y = rnd(randn(g, 2, 2, 4, 5), dt)
        z = rnd(randn(g, 2, 1, 4, 1), dt)
        cases = {
            "permute": (x.permute(2, 0, 3, 1), {"ops": [["permute", [2, 0, 3, 1]]]}),
            "transpose": (x.transpose(1, 3), {"ops": [["transpose", 1, 3]]}),
            "narrow": (x.narrow(2, 1, 2), {"ops": [["narrow", 2, 1, 2]]}),
            "narrow_permute": (x.narrow(3, 2, 3).permute(3, 1, 0, 2), {"ops": [["narrow", 3, 2, 3], ["permute", [3, 1, 0, 2]]]}),
            "select": (x.select(1, 2), {"ops": [["select", 1, 2]]}),
            "select_neg": (x.select(-1, 4), {"ops": [["select", -1, 4]]}),
            "reshape_permuted": (x.permute(0, 2, 1, 3).reshape(8, 15), {"ops": [["permute", [0, 2, 1, 3]], ["reshape", [8, -1]]]}),
            "unsqueeze_squeeze": (x.unsqueeze(2).squeeze(2).unsqueeze(-1), {"ops": [["unsqueeze", 2], ["squeeze", 2], ["unsqueeze", -1]]}),
            "expand": (z.expand(2, 3, 4, 5), {"src": "z", "ops": [["expand", [2, 3, 4, 5]]]}),
            "expand_lead": (z[0, 0].expand(3, 4, 6), {"src": "z", "ops": [["select", 0, 0], ["select", 0, 0], ["expand", [3, 4, 6]]]}),
            "flatten": (x.transpose(0, 1).flatten(2), {"ops": [["transpose", 0, 1], ["flatten", 2]]}),
        }
        for name, (out, params) in cases.items():
            src = params.pop("src", "x")
            f.add_case(f"{name}.{dt}", {"x": {"x": x, "z": z}[src], "out": out}, dtype=dt, **params)
        # split and chunk: every piece
        parts = x.split([1, 2], dim=1)
        f.add_case(f"split.{dt}", {"x": x, **{f"out{i}": p for i, p in enumerate(parts)}},
                   dtype=dt, sizes=[1, 2], axis=1)
        parts = x.chunk(2, dim=2)
        f.add_case(f"chunk.{dt}", {"x": x, **{f"out{i}": p for i, p in enumerate(parts)}}, dtype=dt, chunks=2, axis=2)
        # concat along an inner axis, along the last axis with a permuted part, along the first axis
        f.add_case(f"concat_axis1.{dt}", {"a": x, "b": y, "out": torch.cat([x, y], dim=1)}, dtype=dt, axis=1)
        a2 = x.permute(0, 1, 3, 2)  # [2, 3, 5, 4]
        b2 = rnd(randn(g, 2, 3, 5, 3), dt)
        f.add_case(f"concat_last_permuted.{dt}", {"a": x, "b": b2, "out": torch.cat([a2, b2], dim=-1)},
                   dtype=dt, axis=-1, permuteA=[0, 1, 3, 2])
        f.add_case(f"concat_axis0.{dt}", {"a": x, "b": x[:1], "out": torch.cat([x, x[:1]], dim=0)}, dtype=dt, axis=0,
                   narrowB=[0, 0, 1])
    return f


def f32_from_bits(bits):
    return torch.from_numpy(np.array(bits, dtype=np.uint32).view(np.float32).copy())


def make_convert():
    f = new_file("convert")
    specials = [
        0x00000000, 0x80000000,              # +-0
        0x7F800000, 0xFF800000,              # +-inf
        0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F812345, 0xFF812345,  # NaNs (quiet, signalling, payloads)
        0x3F800000, 0xBF800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF,  # 1, -1, bf16 ties
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF,  # max float; bf16 rounding up to inf
        0x00000001, 0x80000001, 0x00400000, 0x007FFFFF, 0x00008000, 0x00018000,  # float32 subnormals
        0x00800000,                          # smallest normal float32
    ]
    # fp16-specific values built from exact decimals
    f16_vals = [65504.0, 65519.99, 65520.0, -65520.0, 65536.0, 1e6, -1e6,
                1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1.0 + 2 ** -11 + 2 ** -20, -(1.0 + 3 * 2 ** -11),
                2 ** -14, 2 ** -14 * (1 - 2 ** -11), 2 ** -24, 2 ** -25, 2 ** -25 * 1.5, 3 * 2 ** -25,
                2 ** -26, 5 * 2 ** -26, 2 ** -24 * 1023.5, 2 ** -24 * 1022.5, -(2 ** -24), 6.1e-5, 1e-8,
                0.1, 0.2, 0.3, 1 / 3, 2048.5, 2049.0, 4097.0]
    vals = f32_from_bits(specials)
    vals = torch.cat([vals, torch.tensor(f16_vals, dtype=torch.float32)])
    # random bit patterns over the whole float32 range and random normals at several scales
    g = generator("convert.random")
    rbits = torch.randint(0, 2 ** 32, (1000,), generator=g, dtype=torch.int64).numpy().astype(np.uint32)
    rnd_bits = f32_from_bits(rbits)
    rnd_scaled = torch.cat([randn(g, 200) * s for s in (1e-6, 1e-3, 1.0, 1e3, 6e4)])
    x = torch.cat([vals, rnd_bits, rnd_scaled, vals])  # specials again at the end (scalar tail of vector loops)
    x = torch.cat([x, vals[:5]])  # length not a multiple of 8
    f.add_case("f32_to_half", {"x": x, "bf16": x.to(torch.bfloat16), "f16": x.to(torch.float16)})
    # 16-bit patterns to float32 and across the two half types (through float32, one rounding)
    hb = torch.cat([torch.arange(0, 2048, dtype=torch.int32),                  # f16 zero/subnormals/smallest normals
                    torch.tensor([0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7DFF, 0x7BFF, 0xFBFF, 0x8001, 0x83FF,
                                  0x3C00, 0x3C01, 0x4000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0x0080, 0x007F,
                                  0x0001, 0x8000, 0x477F, 0x4780, 0x3380, 0x3300], dtype=torch.int32),
                    torch.randint(0, 65536, (700,), generator=g, dtype=torch.int32)])
    h16 = torch.from_numpy(hb.numpy().astype(np.uint16).view(np.int16).copy())
    as_f16 = h16.view(torch.float16)
    as_bf16 = h16.view(torch.bfloat16)
    f.add_case("half_to_other", {"f16": as_f16, "bf16": as_bf16,
                                 "f16_to_f32": as_f16.float(), "bf16_to_f32": as_bf16.float(),
                                 "f16_to_bf16": as_f16.to(torch.bfloat16), "bf16_to_f16": as_bf16.to(torch.float16)})
    return f


def main():
    makers = [make_linear, make_matmul, make_binary, make_unary, make_reduce, make_softmax, make_norm, make_rope,
              make_attention, make_conv, make_upsample, make_embedding, make_views, make_convert]
    total = 0
    for mk in makers:
        fx = mk()
        size = fx.save()
        total += size
        print(f"{os.path.relpath(fx.path, ROOT):45s} {len(fx.cases):4d} cases {size / 1024:8.1f} KiB")
    print(f"total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
