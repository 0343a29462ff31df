#!/usr/bin/env python3
"""Writes the safetensors interop fixtures in Tests/Fixtures/safetensors/.

Pinned versions (asserted below; the script exits if they differ):
    safetensors 0.8.0, torch 2.15.0, numpy 2.4.6

Regenerate (from the repository root, with a venv holding those versions, e.g. /work/venv):
    /work/venv/bin/python tools/reference/make_safetensors_fixtures.py

Outputs:
  interop.safetensors     written by PyPI `safetensors` (safetensors.torch.save_file): F32, F16,
                          BF16, I64, U8 and BOOL tensors (special values included: +-0, +-inf,
                          NaN, subnormals, extremes), a rank-0 tensor, an empty tensor, a name
                          with non-ASCII characters, and string metadata with quotes, backslash
                          and newline.
  interop_expected.json   the same tensors in an independent plain form: for every tensor its
                          dtype, shape and raw element bits as integers (F32 -> uint32,
                          F16/BF16 -> uint16, I64 -> int64, U8 -> uint8, BOOL -> 0/1, row-major),
                          and the metadata. The Swift test compares the bytes it reads from the
                          .safetensors file with these, bit for bit.
  (The reference writer keeps metadata in a hash map, so the header's key order, and with it
  the file's bytes, can differ between runs; tensor data and offsets do not.)
  example.safetensors     a tiny random checkpoint shaped like the NewBie DiT (official key names,
                          sec. 2.2 of the spec, dims shrunk: dim 16, 2 layers), BF16, for
                          `newbie inspect` and the README. Not a real model.
"""
import json
import os
import sys

import numpy
import safetensors
import torch
from safetensors.torch import save_file

PINS = {"safetensors": "0.8.0", "torch": "2.15.0", "numpy": "2.4.6"}


def check_versions():
    have = {"safetensors": safetensors.__version__, "torch": torch.__version__, "numpy": numpy.__version__}
    bad = [f"{k} {v} (want {PINS[k]})" for k, v in have.items() if v.split("+")[0] != PINS[k]]
    if bad:
        sys.exit("make_safetensors_fixtures.py needs pinned versions; found: " + ", ".join(bad))


OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Tests", "Fixtures", "safetensors")


def raw_bits(t):
    """Element bits of a tensor as a flat list of Python ints."""
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.float32:
        return [int(x) & 0xFFFFFFFF for x in t.view(torch.int32).tolist()]
    if t.dtype in (torch.float16, torch.bfloat16):
        return [int(x) & 0xFFFF for x in t.view(torch.int16).tolist()]
    if t.dtype == torch.int64:
        return [int(x) for x in t.tolist()]
    if t.dtype == torch.uint8:
        return [int(x) for x in t.tolist()]
    if t.dtype == torch.bool:
        return [1 if x else 0 for x in t.tolist()]
    raise ValueError(t.dtype)


ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
           torch.uint8: "U8", torch.bool: "BOOL"}


def interop():
    g = torch.Generator().manual_seed(1234)
    inf, nan = float("inf"), float("nan")
    f32 = torch.randn(3, 5, generator=g)
    f32.view(-1)[:8] = torch.tensor([0.0, -0.0, inf, -inf, nan, 1e-45, 3.4028234663852886e38, -1.1754943508222875e-38])
    f16 = torch.randn(2, 3, 4, generator=g).to(torch.float16)
    f16.view(-1)[:7] = torch.tensor([0.0, -0.0, inf, -inf, nan, 5.960464477539063e-08, 65504.0], dtype=torch.float16)
    bf16 = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    bf16.view(-1)[:7] = torch.tensor([0.0, -0.0, inf, -inf, nan, 9.183549615799121e-41, 3.3895313892515355e38], dtype=torch.bfloat16)
    i64 = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 123456789012345, -42], dtype=torch.int64)
    u8 = torch.tensor([[0, 1, 127, 128, 255], [7, 42, 200, 254, 3]], dtype=torch.uint8)
    boolean = torch.tensor([[True, False, True], [False, False, True], [True, True, False]])
    tensors = {
        "weights.f32": f32,
        "weights.f16": f16,
        "weights.bf16": bf16,
        "ids.i64": i64,
        "pixels.u8": u8,
        "mask.bool": boolean,
        "scalar.f32": torch.tensor(2.5, dtype=torch.float32),
        "empty.f16": torch.zeros(0, 3, dtype=torch.float16),
        "nested/ünïcode 名前": torch.tensor([1.0, -2.0], dtype=torch.float32),
    }
    versions = {k: v for k, v in PINS.items()}
    metadata = {
        "format": "pt",
        "generator": "tools/reference/make_safetensors_fixtures.py",
        "versions": json.dumps(versions, sort_keys=True),
        "note": 'quotes " and backslash \\ and a newline\nend',
    }
    path = os.path.join(OUT, "interop.safetensors")
    save_file(tensors, path, metadata=metadata)
    expected = {
        "versions": versions,
        "metadata": metadata,
        "tensors": {name: {"dtype": ST_NAME[t.dtype], "shape": list(t.shape), "bits": raw_bits(t)}
                    for name, t in tensors.items()},
    }
    with open(os.path.join(OUT, "interop_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    # Self-check: read back with the reference reader, bit for bit.
    from safetensors.torch import load_file
    back = load_file(path)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and raw_bits(back[name]) == raw_bits(t), name


def example():
    """A tiny DiT-shaped checkpoint: official NewBie key names, shrunk dims, random bf16 values."""
    g = torch.Generator().manual_seed(2026)
    dim, heads, kv_heads, ffn, adaln_in, cap, clip, t_freq, patch_in = 16, 2, 1, 48, 16, 24, 16, 16, 64
    head = dim // heads
    qkv_rows = dim + 2 * kv_heads * head

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def block(prefix, modulated):
        t = {
            f"{prefix}.attention.qkv.weight": w(qkv_rows, dim),
            f"{prefix}.attention.out.weight": w(dim, dim),
            f"{prefix}.attention.q_norm.weight": w(head),
            f"{prefix}.attention.k_norm.weight": w(head),
            f"{prefix}.feed_forward.w1.weight": w(ffn, dim),
            f"{prefix}.feed_forward.w2.weight": w(dim, ffn),
            f"{prefix}.feed_forward.w3.weight": w(ffn, dim),
            f"{prefix}.attention_norm1.weight": w(dim),
            f"{prefix}.attention_norm2.weight": w(dim),
            f"{prefix}.ffn_norm1.weight": w(dim),
            f"{prefix}.ffn_norm2.weight": w(dim),
        }
        if modulated:
            t[f"{prefix}.adaLN_modulation.1.weight"] = w(4 * dim, adaln_in)
            t[f"{prefix}.adaLN_modulation.1.bias"] = w(4 * dim)
        return t

    tensors = {
        "x_embedder.weight": w(dim, patch_in), "x_embedder.bias": w(dim),
        "t_embedder.mlp.0.weight": w(adaln_in, t_freq), "t_embedder.mlp.0.bias": w(adaln_in),
        "t_embedder.mlp.2.weight": w(adaln_in, adaln_in), "t_embedder.mlp.2.bias": w(adaln_in),
        "cap_embedder.0.weight": w(cap),
        "cap_embedder.1.weight": w(dim, cap), "cap_embedder.1.bias": w(dim),
        "clip_text_pooled_proj.0.weight": w(clip),
        "clip_text_pooled_proj.1.weight": w(adaln_in, clip), "clip_text_pooled_proj.1.bias": w(adaln_in),
        "time_text_embed.1.weight": w(adaln_in, 2 * adaln_in), "time_text_embed.1.bias": w(adaln_in),
        "norm_final.weight": w(dim),
        "final_layer.linear.weight": w(patch_in, dim), "final_layer.linear.bias": w(patch_in),
        "final_layer.adaLN_modulation.1.weight": w(dim, adaln_in), "final_layer.adaLN_modulation.1.bias": w(dim),
    }
    for i in range(2):
        tensors.update(block(f"layers.{i}", True))
    for j in range(2):
        tensors.update(block(f"noise_refiner.{j}", True))
        tensors.update(block(f"context_refiner.{j}", False))
    save_file(tensors, os.path.join(OUT, "example.safetensors"), metadata={
        "format": "pt",
        "description": "tiny random checkpoint shaped like the NewBie DiT (official key names, dim 16, 2 layers); not a real model",
        "generator": "tools/reference/make_safetensors_fixtures.py",
    })


if __name__ == "__main__":
    check_versions()
    os.makedirs(OUT, exist_ok=True)
    interop()
    example()
    print("wrote", os.path.normpath(OUT))
