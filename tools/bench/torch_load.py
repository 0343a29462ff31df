"""PyTorch baseline for loading: every *.safetensors file under a model folder onto the GPU as
PyTorch users load them (safetensors' `load_file(..., device="cuda")` when the package is there,
else torch.frombuffer over the file read into memory, then .cuda()), timed per part with the GPU
synchronised. Runs on the GPU machine.

    python3 tools/bench/torch_load.py /tmp/newbie-random
"""
import glob
import json
import os
import struct
import sys
import time

import torch

root = sys.argv[1]
try:
    from safetensors.torch import load_file
except ImportError:
    load_file = None

DT = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def manual(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=DT[info["dtype"]]).reshape(info["shape"])
        out[name] = t.cuda()
    return out


torch.zeros(1, device="cuda")
total = 0.0
for part in ["text_encoder", "clip_model", "transformer", "vae"]:
    files = sorted(glob.glob(os.path.join(root, part, "*.safetensors")))
    t0 = time.perf_counter()
    held = [load_file(f, device="cuda") if load_file else manual(f) for f in files]
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    total += dt
    size = sum(os.path.getsize(f) for f in files) / 2**30
    print(f"torch load {part}: {dt:.2f} s ({size:.2f} GiB, {'safetensors' if load_file else 'frombuffer'})", flush=True)
    del held
    torch.cuda.empty_cache()
print(f"torch load all four: {total:.2f} s", flush=True)
