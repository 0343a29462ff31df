#!/usr/bin/env python3
"""Writes Tests/Fixtures/quantfiles/gemma_tiny_b.q8_0.gguf: the tiny Gemma 3 fixture's GGUF
(Tests/Fixtures/gemma/tiny_b/model.gguf, llama.cpp naming) with every linear weight whose rows are
whole 32-value blocks (attn_output, ffn_down) quantized to Q8_0 by `gguf.quants.quantize`, the rest
copied as stored, every metadata entry copied. The Gemma GGUF loader holds those Q8_0 blocks
resident; the Swift test compares that encoder with the same file widened at load.

Pinned: gguf 0.19.0, numpy 2.4.6. Regenerate from the repository root:
    /work/venv/bin/python tools/reference/make_gemma_q8_gguf.py
"""
import os
import sys
from importlib.metadata import version

import numpy as np

PINS = {"gguf": "0.19.0", "numpy": "2.4.6"}
for pkg, want in PINS.items():
    if version(pkg) != want:
        sys.exit(f"{pkg} {want} is required; found {version(pkg)}")

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SRC = os.path.join(ROOT, "Tests", "Fixtures", "gemma", "tiny_b", "model.gguf")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "quantfiles", "gemma_tiny_b.q8_0.gguf")

r = gguf.GGUFReader(SRC)
arch = r.fields["general.architecture"].contents()
w = gguf.GGUFWriter(OUT, arch)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1])
    else:
        w.add_key_value(name, field.contents(), vtype)
quantized = []
for t in r.tensors:
    data = np.array(t.data)
    shape = [int(d) for d in reversed(t.shape)]  # numpy order [rows, cols]
    if t.tensor_type == Q.F16:
        data = data.astype(np.float32)
    data = data.reshape(shape).astype(np.float32)
    is_linear = t.name.startswith("blk.") and t.name.endswith(".weight") and len(shape) == 2
    if is_linear and shape[1] % 32 == 0:
        w.add_tensor(t.name, gguf.quants.quantize(data, Q.Q8_0), raw_shape=gguf.quant_shape_to_byte_shape(shape, Q.Q8_0), raw_dtype=Q.Q8_0)
        quantized.append(t.name)
    elif t.tensor_type == Q.F16:
        w.add_tensor(t.name, data.astype(np.float16))
    else:
        w.add_tensor(t.name, data)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {OUT}: {len(quantized)} Q8_0 tensors ({', '.join(quantized[:4])}, ...)")
