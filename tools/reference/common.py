"""Shared helpers for the reference-fixture scripts in tools/reference/.

Generic on purpose: a pinned-version check, seeds, and a reproducible safetensors writer. Nothing in here
knows about a particular op or model.

Fixture layout used by the writer: one .safetensors file holds many cases. Tensors are named
"<case>/<role>" (e.g. "bias_3d.bf16/x", "bias_3d.bf16/out"); the file's __metadata__ has a key
"cases" whose value is a JSON list of {"name": <case>, ...parameters...}, plus "generator" (the
script that wrote it) and "versions" (JSON of the pinned package versions).
"""
import importlib
import json
import os
import struct
import sys
import zlib

import torch
from safetensors import safe_open

_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
for _name, _st in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _ST_DTYPES[getattr(torch, _name)] = _st


def check_versions(pins):
    """Exits with a message unless every package in `pins` ({module: version}) is installed at that
    version. A local suffix such as torch's "+cpu" / "+cu132" is ignored."""
    bad = []
    for module, want in pins.items():
        have = importlib.import_module(module).__version__
        if have.split("+")[0] != want:
            bad.append(f"{module} {have} (want {want})")
    if bad:
        sys.exit("reference fixtures need pinned versions; found: " + ", ".join(bad))


def seed_for(name, base=0):
    """A stable seed derived from a case name (independent of Python's hash randomisation)."""
    return (zlib.crc32(name.encode()) + base) & 0x7FFFFFFF


def generator(name, base=0):
    g = torch.Generator()
    g.manual_seed(seed_for(name, base))
    return g


def tensor_bytes(t):
    """Little-endian raw bytes of a CPU tensor, in row-major order."""
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes a safetensors file byte-for-byte reproducibly: header keys sorted (the safetensors
    package writes __metadata__ from a hash map, so its key order changes from run to run), tensors
    laid out by element size (largest first) then name so every tensor starts aligned to its element
    size, header padded with spaces to a multiple of 8. Read back with the safetensors package and
    compared bit for bit before returning."""
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header = {}
    blobs = []
    offset = 0
    for n in names:
        t = tensors[n]
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"{n}: dtype {t.dtype} has no safetensors name")
        b = tensor_bytes(t)
        header[n] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for b in blobs:
            fh.write(b)
    with safe_open(path, "pt") as fh:
        assert (fh.metadata() or {}) == (metadata or {}), path
        for n in names:
            if tensor_bytes(fh.get_tensor(n)) != tensor_bytes(tensors[n]):
                raise AssertionError(f"{path}: {n} did not read back bit for bit")


class FixtureFile:
    """Collects tensors and case parameters, then writes one safetensors file."""

    def __init__(self, path, generator_name, versions):
        self.path = path
        self.tensors = {}
        self.cases = []
        self.meta = {"generator": generator_name, "versions": json.dumps(versions, sort_keys=True)}

    def add_case(self, name, tensors, **params):
        """Adds a case: `tensors` maps role -> torch tensor (stored as is, made contiguous)."""
        if any(c["name"] == name for c in self.cases):
            raise ValueError(f"duplicate case {name}")
        for role, t in tensors.items():
            key = f"{name}/{role}"
            self.tensors[key] = t.detach().contiguous().clone()
        entry = {"name": name}
        entry.update(params)
        self.cases.append(entry)

    def save(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        meta = dict(self.meta)
        meta["cases"] = json.dumps(self.cases, sort_keys=True)
        write_safetensors(self.path, self.tensors, meta)
        return os.path.getsize(self.path)
