#!/usr/bin/env python3
"""Compile one kernel module of Sources/NewBieCUDA/Kernels with NVRTC (no GPU needed) and print
ptxas's register / shared-memory / spill report, with the options the engine uses (NVRTC.swift).

    LD_LIBRARY_PATH=<dir with libnvrtc.so.13> python3 tools/bench/nvrtc_compile.py flash_hopper 90a

Exit status 0 when the module compiles; the log (and ptxas's report) on stdout.
"""
import ctypes, pathlib, sys

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "Sources/NewBieCUDA/Kernels"


def compile_module(name: str, arch: str, verbose: bool = True):
    nvrtc = ctypes.CDLL("libnvrtc.so.13")
    src = (KERNELS / f"{name}.cu").read_bytes()
    hdr = (KERNELS / "common.cuh").read_bytes()
    prog = ctypes.c_void_p()
    hdrs = (ctypes.c_char_p * 1)(hdr)
    names = (ctypes.c_char_p * 1)(b"common.cuh")
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, f"{name}.cu".encode(), 1, hdrs, names)
    assert rc == 0, f"nvrtcCreateProgram: {rc}"
    opts = [f"--gpu-architecture=sm_{arch}", "--std=c++17", "-default-device", "--fmad=true", "-lineinfo"]
    if verbose:
        opts.append("--ptxas-options=-v")
    copts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), copts)
    n = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    cubin = b""
    if status == 0:
        nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetCUBIN(prog, buf)
        cubin = buf.raw
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return status, log.value.decode(errors="replace"), cubin


if __name__ == "__main__":
    module = sys.argv[1] if len(sys.argv) > 1 else "flash_hopper"
    arch = sys.argv[2] if len(sys.argv) > 2 else "90a"
    status, log, cubin = compile_module(module, arch)
    print(log)
    print(f"{module} sm_{arch}: {'compiled, %d bytes of cubin' % len(cubin) if status == 0 else 'FAILED (%d)' % status}")
    if len(sys.argv) > 3 and status == 0:
        pathlib.Path(sys.argv[3]).write_bytes(cubin)
    sys.exit(0 if status == 0 else 1)
