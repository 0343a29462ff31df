#!/usr/bin/env python3
"""Writes the quantized-file fixtures in Tests/Fixtures/quantfiles/ (issue 15, file side).

Pinned versions (asserted below; the script exits if they differ):
    gguf 0.19.0, numpy 2.4.6, safetensors 0.8.0, torch 2.15.0

Regenerate (from the repository root, with a venv holding those versions, e.g. /work/venv):
    /work/venv/bin/python tools/reference/make_quantfile_fixtures.py

Outputs:
  dit.safetensors        a tiny NextDiT (dim 64, 1 layer + 1 noise + 1 context refiner, heads 4/2,
                         ffn 128) in the official naming with random bf16-exact weights, stored bf16.
  config.json            its official config (read by the loaders for every file of the folder: the
                         RoPE axes of head_dim 16 cannot be inferred from shapes).
  dit.<type>.gguf        the same weights as city96's ComfyUI-GGUF convert.py lays a Lumina 2 DiT
                         out: arch "lumina2", official tensor names, 1-D tensors and tensors of at
                         most 1024 values in F32, every other tensor quantized to <type> with
                         `gguf.quants.quantize` (Q8_0, Q5_0, Q4_0). The K-quants are not here:
                         gguf 0.19.0 has no quantizer for them (only a dequantizer; the block
                         decoders are checked bit for bit by make_gguf_fixtures.py).
  dit.mixed.gguf         one file holding every 2-D weight in a type taken in turn from F32, F16,
                         BF16, Q8_0, Q5_0, Q4_0 (checks the reader per tensor type).
  dit_expected.safetensors  "dit.mixed.gguf/<tensor>": `gguf.quants.dequantize` of every Q8_0/Q5_0/
                         Q4_0 tensor of the mixed file, float32, row-major shape; the Swift tests require
                         bit equality.
  fp8_cases.safetensors  torch float8_e4m3fn casts: "all_bits" (u8 0..255) decoded to float32;
                         "from_f32/in" a set of float32 values (ties, subnormals, saturation edges,
                         inf, nan) and "from_f32/out" their `.to(torch.float8_e4m3fn)` bytes.
  dit.comfy_fp8.safetensors  the tiny DiT as ComfyUI's scaled fp8 checkpoints store one: every
                         2-D weight of the blocks F8_E4M3 (w / scale cast by torch) with a float32
                         scalar "<module>.scale_weight", plus the empty "scaled_fp8" marker tensor;
                         dit.comfy_fp8_expected.safetensors holds, for the three qkv weights, torch's
                         `w8.to(float32) * scale_weight`.
"""
import json
import os
import sys

import numpy as np

PINS = {"numpy": "2.4.6", "safetensors": "0.8.0", "torch": "2.15.0"}
GGUF_PIN = "0.19.0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check_versions  # noqa: E402
from importlib.metadata import version as dist_version  # noqa: E402

check_versions(PINS)
if dist_version("gguf") != GGUF_PIN:
    sys.exit(f"reference fixtures need gguf {GGUF_PIN}; found {dist_version('gguf')}")

import gguf  # noqa: E402
import torch  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "quantfiles")
os.makedirs(OUT, exist_ok=True)
gen = torch.Generator().manual_seed(20261203)

DIM, HEADS, KV, HD, FFN, CAP, CLIP, PATCH_OUT = 64, 4, 2, 16, 128, 32, 32, 64


def lin(name, out, inp, bias, sd):
    sd[name + ".weight"] = torch.randn(out, inp, generator=gen) / inp ** 0.5
    if bias:
        sd[name + ".bias"] = 0.1 * torch.randn(out, generator=gen)


def norm(name, n, sd):
    sd[name + ".weight"] = 1.0 + 0.2 * torch.randn(n, generator=gen)


def block(p, sd, modulation):
    lin(p + ".attention.qkv", (HEADS + 2 * KV) * HD, DIM, False, sd)
    lin(p + ".attention.out", DIM, HEADS * HD, False, sd)
    norm(p + ".attention.q_norm", HD, sd)
    norm(p + ".attention.k_norm", HD, sd)
    lin(p + ".feed_forward.w1", FFN, DIM, False, sd)
    lin(p + ".feed_forward.w2", DIM, FFN, False, sd)
    lin(p + ".feed_forward.w3", FFN, DIM, False, sd)
    for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
        norm(p + "." + n, DIM, sd)
    if modulation:
        lin(p + ".adaLN_modulation.1", 4 * DIM, DIM, True, sd)


def tiny_dit():
    sd = {}
    lin("x_embedder", DIM, PATCH_OUT, True, sd)
    lin("t_embedder.mlp.0", DIM, 256, True, sd)
    lin("t_embedder.mlp.2", DIM, DIM, True, sd)
    norm("cap_embedder.0", CAP, sd)
    lin("cap_embedder.1", DIM, CAP, True, sd)
    norm("clip_text_pooled_proj.0", CLIP, sd)
    lin("clip_text_pooled_proj.1", CLIP, CLIP, True, sd)
    lin("time_text_embed.1", DIM, DIM + CLIP, True, sd)
    block("layers.0", sd, True)
    block("noise_refiner.0", sd, True)
    block("context_refiner.0", sd, False)
    lin("final_layer.adaLN_modulation.1", DIM, DIM, True, sd)
    lin("final_layer.linear", PATCH_OUT, DIM, True, sd)
    norm("norm_final", DIM, sd)
    return {k: v.to(torch.bfloat16) for k, v in sorted(sd.items())}


def city96_type(name, t, qtype):
    """The type convert.py gives a tensor: small and 1-D ones F32, the rest `qtype`."""
    if t.ndim == 1 or t.numel() <= 1024:
        return Q.F32
    return qtype


def write_gguf(path, sd, type_of, keep_expected):
    w = gguf.GGUFWriter(path, arch="lumina2")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    expected = {}
    for name, t in sd.items():
        data = t.to(torch.float32).numpy()
        qtype = type_of(name, t)
        if qtype == Q.F32:
            w.add_tensor(name, data)
            continue
        if qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
            continue
        raw = gguf.quants.quantize(data, qtype)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        if keep_expected and qtype != Q.BF16:
            deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
            assert deq.shape == data.shape and np.isfinite(deq).all(), name
            expected[os.path.basename(path) + "/" + name] = torch.from_numpy(np.ascontiguousarray(deq))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def main():
    sd = tiny_dit()
    config = {"model_type": "nextdit_clip", "patch_size": 2, "dim": DIM, "n_layers": 1, "n_heads": HEADS,
              "n_kv_heads": KV, "in_channels": 16, "axes_dims": [4, 4, 8], "axes_lens": [64, 32, 32],
              "clip_text_dim": CLIP, "clip_img_dim": CLIP}
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(sd, os.path.join(OUT, "dit.safetensors"),
              metadata={"generator": "tools/reference/make_quantfile_fixtures.py"})
    expected = {}
    for qtype in (Q.Q8_0, Q.Q5_0, Q.Q4_0):
        path = os.path.join(OUT, f"dit.{qtype.name.lower()}.gguf")
        write_gguf(path, sd, lambda n, t, q=qtype: city96_type(n, t, q), keep_expected=False)
    cycle = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q5_0, Q.Q4_0]
    order = {n: i for i, n in enumerate(k for k, v in sd.items() if v.ndim == 2)}
    expected.update(write_gguf(os.path.join(OUT, "dit.mixed.gguf"), sd,
                               lambda n, t: cycle[order[n] % len(cycle)] if n in order else Q.F32,
                               keep_expected=True))
    save_file(expected, os.path.join(OUT, "dit_expected.safetensors"),
              metadata={"generator": "tools/reference/make_quantfile_fixtures.py", "gguf": GGUF_PIN})

    # fp8 e4m3fn casts, both directions, as torch does them
    all_bits = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)
    specials = [0.0, -0.0, 1.0, -1.0, 448.0, -448.0, 449.0, 463.99, 464.0, 465.0, 479.0, 480.0, 500.0, 1e6,
                -1e6, float("inf"), float("-inf"), float("nan"), 2.0 ** -6, 2.0 ** -9, 2.0 ** -10,
                2.0 ** -10 * 1.0001, 3 * 2.0 ** -10, 2.0 ** -11, 1e-30, 1.0625, 1.0625 * (1 + 2 ** -20),
                1.1875, 1.125 + 2 ** -4, 0.013671875, 240.0, 248.0, 232.0, 1e-3]
    rand = torch.randn(2000, generator=gen) * torch.exp2(torch.randint(-12, 10, (2000,), generator=gen).float())
    inp = torch.cat([torch.tensor(specials, dtype=torch.float32), rand])
    out = inp.to(torch.float8_e4m3fn).view(torch.uint8)
    save_file({"all_bits": all_bits, "from_f32/in": inp, "from_f32/out": out},
              os.path.join(OUT, "fp8_cases.safetensors"),
              metadata={"generator": "tools/reference/make_quantfile_fixtures.py", "torch": torch.__version__})

    # ComfyUI scaled fp8: weight = w8.to(dtype) * scale_weight
    comfy = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    comfy_expected = {}
    for name, t in sd.items():
        blockish = name.startswith(("layers.", "noise_refiner.", "context_refiner.")) and t.ndim == 2
        if blockish:
            w = t.to(torch.float32)
            scale = (w.abs().max() / 448.0).reshape(())
            w8 = (w / scale).to(torch.float8_e4m3fn)
            module = name[: -len(".weight")]
            comfy[name] = w8
            comfy[module + ".scale_weight"] = scale
            if name.endswith(".0.attention.qkv.weight"):
                comfy_expected[name] = w8.to(torch.float32) * scale
        else:
            comfy[name] = t
    save_file(comfy, os.path.join(OUT, "dit.comfy_fp8.safetensors"),
              metadata={"generator": "tools/reference/make_quantfile_fixtures.py", "torch": torch.__version__})
    save_file(comfy_expected, os.path.join(OUT, "dit.comfy_fp8_expected.safetensors"),
              metadata={"generator": "tools/reference/make_quantfile_fixtures.py", "torch": torch.__version__})

    # self-check with the gguf package's own reader
    for f in sorted(os.listdir(OUT)):
        if f.endswith(".gguf"):
            r = gguf.GGUFReader(os.path.join(OUT, f))
            for t in r.tensors:
                key = f + "/" + t.name
                if key in expected:
                    got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[key].shape)
                    assert np.array_equal(got.view(np.uint32), expected[key].numpy().view(np.uint32)), key
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
