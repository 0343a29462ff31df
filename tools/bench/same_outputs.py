#!/usr/bin/env python3
"""Checks that two runs produced bit-identical results, ignoring metadata.

    same_outputs.py A B      (both .safetensors, or both .png)

safetensors: every tensor present in both files must have the same dtype, shape and bytes
(the JSON header's metadata is ignored). PNG: the decompressed image data (IDAT) and the
header chunk must be equal; text chunks (the stored parameters) are ignored.
Needs only the Python standard library. Exit status 0 when identical, 1 otherwise.
"""
import json, struct, sys, zlib


def safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def png(path):
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, ihdr, idat = 8, None, b""
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        body = blob[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return {"IHDR": ("", [], ihdr), "pixels": ("", [], zlib.decompress(idat))}


def main(a, b):
    read = png if a.endswith(".png") else safetensors
    ta, tb = read(a), read(b)
    same = True
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            print(f"{name}: only in {'first' if name in ta else 'second'} file")
            same = False
            continue
        (da, sa, ba), (db, sb, bb) = ta[name], tb[name]
        if (da, sa) != (db, sb):
            print(f"{name}: {da}{sa} vs {db}{sb}")
            same = False
        elif ba != bb:
            diff = sum(x != y for x, y in zip(ba, bb))
            print(f"{name}: {diff} of {len(ba)} bytes differ")
            same = False
    print(("identical: " if same else "DIFFERENT: ") + f"{a} {b}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
