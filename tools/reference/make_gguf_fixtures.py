#!/usr/bin/env python3
"""Writes the GGUF fixtures in Tests/Fixtures/gguf/.

Pinned versions (asserted below; the script exits if they differ):
    gguf 0.19.0, numpy 2.4.6, safetensors 0.8.0, torch 2.15.0

Regenerate (from the repository root, with a venv holding those versions, e.g. /work/venv):
    /work/venv/bin/python tools/reference/make_gguf_fixtures.py

Outputs:
  quants.gguf                 written by `gguf.GGUFWriter`: one 2-D tensor per type
                              F32, F16, BF16, Q8_0, Q4_0, Q5_0 (random data quantized with
                              `gguf.quants.quantize`) and Q4_K, Q5_K, Q6_K (the `gguf` package only
                              dequantizes these: blocks of random bytes with finite random fp16
                              scales), plus metadata of every GGUF value type.
  quants_expected.safetensors for every tensor the values `gguf.quants.dequantize` gives, as
                              float32, under the same name, in row-major (PyTorch) shape = the
                              GGUF dims reversed. The Swift test requires bit equality.
"""
import os
import sys

import numpy as np

PINS = {"numpy": "2.4.6", "safetensors": "0.8.0", "torch": "2.15.0"}
GGUF_PIN = "0.19.0"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check_versions  # noqa: E402
from importlib.metadata import version as dist_version  # noqa: E402

check_versions(PINS)
if dist_version("gguf") != GGUF_PIN:  # the gguf module has no __version__
    sys.exit(f"reference fixtures need gguf {GGUF_PIN}; found {dist_version('gguf')}")

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "gguf")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(20261129)


def random_fp16_bytes(n, lo, hi):
    v = rng.uniform(lo, hi, size=n).astype(np.float16)
    sign = rng.choice([-1, 1], size=n).astype(np.float16)
    return (v * sign).view(np.uint8).reshape(n, 2)


def crafted_k_blocks(qtype, n_blocks):
    """Random K-quant blocks with finite fp16 scales placed where ggml keeps them."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype in (Q.Q4_K, Q.Q5_K):
        # d, dmin at bytes 0..3
        b[:, 0:2] = random_fp16_bytes(n_blocks, 1e-3, 2.0)
        b[:, 2:4] = random_fp16_bytes(n_blocks, 1e-3, 2.0)
    elif qtype == Q.Q6_K:
        # d is the last 2 bytes
        b[:, type_size - 2:] = random_fp16_bytes(n_blocks, 1e-3, 2.0)
    else:
        raise ValueError(qtype)
    return b


writer_path = os.path.join(OUT, "quants.gguf")
w = gguf.GGUFWriter(writer_path, arch="newbie-test")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 0.15625)
w.add_bool("test.bool", True)
w.add_string("test.string", "héllo ▁ 世界\n")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
w.add_float64("test.f64", -2.5e-300)
w.add_array("test.strings", ["<pad>", "▁a", "", "😀"])
w.add_array("test.ints", [1, -2, 3])
w.add_array("test.floats", [0.5, -1.25])

expected = {}
rows = 3
for qtype in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_K, Q.Q5_K, Q.Q6_K):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    width = 64 if block_size == 1 else 2 * block_size
    name = f"t.{qtype.name.lower()}"
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        raw = crafted_k_blocks(qtype, rows * width // block_size).reshape(rows, -1)
    else:
        data = rng.standard_normal((rows, width)).astype(np.float32) * 3
        if qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_0):
            data[0, :block_size] = 0  # an all-zero block (scale 0)
        raw = gguf.quants.quantize(data, qtype)
    deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    assert deq.shape == (rows, width), (qtype, deq.shape)
    assert np.isfinite(deq).all(), qtype
    if qtype in (Q.F32, Q.F16):
        w.add_tensor(name, raw)
    else:
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    expected[name] = np.ascontiguousarray(deq)

# a 3-D tensor: GGUF dims are reversed relative to the row-major shape
t3 = rng.standard_normal((2, 3, 32)).astype(np.float32)
w.add_tensor("t.f32_3d", t3)
expected["t.f32_3d"] = t3

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

save_file(expected, os.path.join(OUT, "quants_expected.safetensors"),
          metadata={"generator": "tools/reference/make_gguf_fixtures.py", "gguf": GGUF_PIN})

# self-check with the package's own reader
r = gguf.GGUFReader(writer_path)
for t in r.tensors:
    got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
    assert np.array_equal(got.view(np.uint32), expected[t.name].view(np.uint32)), t.name
print("wrote", writer_path, os.path.getsize(writer_path), "bytes")
