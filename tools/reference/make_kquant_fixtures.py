#!/usr/bin/env python3
"""Writes Tests/Fixtures/quant/kquants.safetensors: K-quant blocks (Q6_K, Q5_K, Q4_K) as ggml's
reference quantizers write them, for the Swift writers (GGUFQuantizeK.swift) to match byte for byte.

The gguf package (0.19.0) has no K-quant quantizer, so the reference is ggml itself through
ggml-python's `ggml_quantize_chunk` (no importance matrix: it runs `quantize_row_q*_K_ref`, what
llama-quantize and city96's patched llama-quantize run without --imatrix).

Pinned versions (asserted below): ggml-python 0.0.45 (its vendored ggml, built from the sdist
with GGML_NATIVE off, so no fused multiply-adds), numpy 2.4.6, safetensors 0.8.0.

Regenerate (from the repository root; ggml-python is not in /work/venv, a scratch venv works):
    python3 -m venv /tmp/ggmlvenv
    /tmp/ggmlvenv/bin/pip install ggml-python==0.0.45 numpy==2.4.6 safetensors==0.8.0
    /tmp/ggmlvenv/bin/python tools/reference/make_kquant_fixtures.py

Tensors:
  "x"            float32 [rows, 512]: the inputs (two 256-value super-blocks per row), cases listed
                 in the metadata "rows" (random at three magnitudes, an all-zero sub-block, an
                 all-zero row, a constant row, all positive, all negative, one outlier, values
                 near f16's subnormal range, exact .5 steps).
  "<type>"       uint8 [rows, row bytes]: ggml's blocks of x for type q6_k, q5_k, q4_k.
"""
import ctypes
import json
import os
import sys
from importlib.metadata import version

import numpy as np

PINS = {"ggml-python": "0.0.45", "numpy": "2.4.6", "safetensors": "0.8.0"}
for pkg, want in PINS.items():
    if version(pkg) != want:
        sys.exit(f"{pkg} {want} is required; found {version(pkg)}")

import ggml  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "quant", "kquants.safetensors")

COLS = 512
rng = np.random.default_rng(20261203)
rows, names = [], []


def add(name, v):
    rows.append(np.asarray(v, dtype=np.float32).reshape(COLS))
    names.append(name)


for k in range(4):
    add(f"normal {k}", rng.standard_normal(COLS))
add("normal x1e-3", 1e-3 * rng.standard_normal(COLS))
add("normal x100", 100 * rng.standard_normal(COLS))
z = rng.standard_normal(COLS)
z[:32] = 0
z[256:272] = 0
add("zero sub-blocks", z)
add("all zero", np.zeros(COLS))
add("constant", np.full(COLS, 0.5))
add("all positive", rng.uniform(0.1, 1.0, COLS))
add("all negative", -rng.uniform(0.1, 1.0, COLS))
o = 0.01 * rng.standard_normal(COLS)
o[17] = 5.0
o[300] = -7.0
add("outlier", o)
add("tiny", 1e-6 * rng.standard_normal(COLS))
add("half steps", (rng.integers(-16, 16, COLS) * 0.5))
add("laplace", rng.laplace(0, 1, COLS))
x = np.stack(rows).astype(np.float32)

tensors = {"x": x}
for tname, t in (("q6_k", ggml.GGML_TYPE_Q6_K), ("q5_k", ggml.GGML_TYPE_Q5_K), ("q4_k", ggml.GGML_TYPE_Q4_K)):
    rs = ggml.ggml_row_size(t, COLS)
    buf = (ctypes.c_uint8 * (rs * len(rows)))()
    src = np.ascontiguousarray(x)
    n = ggml.ggml_quantize_chunk(t, src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.cast(buf, ctypes.c_void_p),
                                 0, len(rows), COLS, None)
    assert n == rs * len(rows), (tname, n, rs)
    tensors[tname] = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(len(rows), rs).copy()

save_file(tensors, OUT, metadata={"rows": json.dumps(names), "generator": "tools/reference/make_kquant_fixtures.py",
                                  "versions": json.dumps(PINS)})
print(f"wrote {OUT}: {len(rows)} rows of {COLS}")
