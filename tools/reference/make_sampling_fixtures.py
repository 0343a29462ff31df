#!/usr/bin/env python3
"""Reference fixtures for sampling and noise (issue #6, items 1 and 3): the shifted time grid, the
official fixed-grid ODE integrators, DPM-Solver++ 2M on the "time_uniform_flow" grid, the official
forward_with_cfg guidance arithmetic, and torch.randn on the CPU.

Pinned versions (asserted at start):
    torch 2.15.0, numpy 2.4.6, safetensors 0.8.0, torchdiffeq 0.2.5 (scipy comes with it)

Regenerate (from the repository root):
    /work/venv/bin/python tools/reference/make_sampling_fixtures.py
(any venv with the pinned versions: `pip install torch==2.15.0 numpy==2.4.6 safetensors==0.8.0
torchdiffeq==0.2.5`). CPU only, a few seconds. The noise cases also run the script once more in a
child process with ATEN_CPU_CAPABILITY=default, to record torch's non-vectorised randn path.

Where each reference comes from:
  - grid:   exactly the official `transport/integrators.py` `ode.__init__`: float32
            `torch.linspace(0, 1, N)` then `t / (t + s - s * t)`.
  - euler / midpoint / rk4: `torchdiffeq.odeint(fn, x, grid, method=...)`, which is what the official
            `ode.sample` calls (fixed grid = the time points themselves; the official code keeps
            the last state, odeint returns every state and all are stored).
  - dpm:    DPM-Solver++ multistep order 2 written here from the semantics of the official
            `transport/dpm_solver.py` (NoiseScheduleFlow alpha = 1 - s, sigma = s; skip_type
            "time_uniform_flow"; t_T = 1, t_0 = 1/1000; lower_order_final; data prediction from the
            velocity model exactly as `Sampler.sample_dpm` wraps it: model called at 1 - sigma,
            noise = x - (1 - sigma) v, x0 = (x - sigma noise) / (1 - sigma)).
  - cfg:    the arithmetic of the official `NextDiT_CLIP.forward_with_cfg` applied to given
            conditional / unconditional velocities, one sample at a time (the official code uses
            `.item()`, i.e. batch 1 per half).
  - noise:  `torch.manual_seed(seed); torch.randn(shape)` (float32, CPU).

The toy velocity field for the trajectories is v(x, t) = A x + b t, with x flattened to D values,
A [D, D] and b [D] fixed random float32 (stored), computed in float64 and rounded to float32 so
that the Swift side can evaluate the same field to the last bit.

Writes Tests/Fixtures/sampling/:
  - sampling.safetensors  cases grid.*, dpm_grid.*, euler.*, midpoint.*, rk4.*, dpm.*, cfg.*
  - noise.safetensors     cases randn.* (the stored values are float32, compared bit for bit)
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator  # noqa: E402

PINS = {"torch": "2.15.0", "numpy": "2.4.6", "safetensors": "0.8.0", "torchdiffeq": "0.2.5"}

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "sampling")

# (name, seed, shape, keep): keep = "all" or "ends" (first and last 1000 values only).
NOISE_CASES = [
    ("s0_1", 0, [1], "all"),
    ("s0_7", 0, [7], "all"),
    ("s42_15", 42, [15], "all"),
    ("s42_3x5", 42, [3, 5], "all"),
    ("s0_16", 0, [16], "all"),
    ("s7_16", 7, [16], "all"),
    ("s1_17", 1, [17], "all"),
    ("s3_33", 3, [33], "all"),
    ("s123_3x5x7", 123, [3, 5, 7], "all"),
    ("s2024_1x4x5x7", 2024, [1, 4, 5, 7], "all"),
    ("s42_1x16x5x7", 42, [1, 16, 5, 7], "all"),
    ("s1234567_1x16x6x9", 1234567, [1, 16, 6, 9], "all"),
    ("big_seed_40", 2**32 + 5, [40], "all"),
    ("s42_1x16x128x128", 42, [1, 16, 128, 128], "ends"),
    ("s0_1x16x128x128", 0, [1, 16, 128, 128], "ends"),
]


def noise_values(cases):
    """{name: float32 tensor} for the cases, in this process (so under its CPU capability)."""
    out = {}
    for name, seed, shape, keep in cases:
        torch.manual_seed(seed)
        x = torch.randn(shape).reshape(-1)
        if keep == "ends":
            x = torch.cat([x[:1000], x[-1000:]])
        out[name] = x.clone()
    # The Box-Muller cache: calls after an odd small call reuse the cached sine value.
    torch.manual_seed(99)
    parts = [torch.randn(3), torch.randn(5), torch.randn(20), torch.randn(1)]
    out["sequence_3_5_20_1"] = torch.cat(parts)
    return out


def child_main(path):
    torch.save(noise_values(NOISE_CASES), path)


# ---------------------------------------------------------------------------------------------
# sampling references


def official_grid(n, shift):
    t = torch.linspace(0, 1, n)
    if shift:
        t = t / (t + shift - shift * t)
    return t


def dpm_timesteps(n, shift):
    """Official get_time_steps("time_uniform_flow", t_T=1, t_0=1/1000, N=n): n + 1 noise levels."""
    betas = torch.linspace(1.0, 1.0 / 1000, n + 1)
    sigmas = 1.0 - betas
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).flip(dims=[0])


class Field:
    def __init__(self, name, shape):
        g = generator(name)
        d = 1
        for s in shape:
            d *= s
        self.shape = shape
        self.a = (torch.randn(d, d, generator=g) * (1.5 / d ** 0.5)).float()
        self.b = torch.randn(d, generator=g).float()

    def __call__(self, x, t):
        """x: [*shape] float32; t: float or 0-d tensor. Returns float32 [*shape]."""
        xf = x.reshape(-1).double()
        tt = float(t)
        v = self.a.double() @ xf + self.b.double() * tt
        return v.float().reshape(self.shape)


def run_odeint(field, x0, grid, method):
    from torchdiffeq import odeint

    def fn(t, x):
        return field(x, t)

    return odeint(fn, x0, grid, method=method, atol=1e-6, rtol=1e-3)


def run_dpm(field, x, steps, shift):
    """DPM-Solver++(2M), multistep, lower_order_final, on the velocity field as the official
    Sampler.sample_dpm wraps it. Returns (timesteps, states after each update, model times)."""
    ts = dpm_timesteps(steps, shift)

    def lam(s):
        return torch.log(1 - s) - torch.log(s)

    def x0_pred(x, s):
        v = field(x, 1 - s)
        noise = x - (1 - s) * v
        return (x - s * noise) / (1 - s)

    states = []
    t_prev = [ts[0]]
    m_prev = [x0_pred(x, ts[0])]
    for step in range(1, steps + 1):
        t = ts[step]
        order = 1 if step == 1 else min(2, steps + 1 - step)
        s0 = t_prev[-1]
        h = lam(t) - lam(s0)
        phi = torch.expm1(-h)
        alpha_t = torch.exp(torch.log(1 - t))
        if order == 1:
            x = t / s0 * x - alpha_t * phi * m_prev[-1]
        else:
            s1 = t_prev[-2]
            h0 = lam(s0) - lam(s1)
            r0 = h0 / h
            d1 = (1.0 / r0) * (m_prev[-1] - m_prev[-2])
            x = (t / s0) * x - (alpha_t * phi) * m_prev[-1] - 0.5 * (alpha_t * phi) * d1
        states.append(x.clone())
        t_prev = (t_prev + [t])[-2:]
        if step < steps:
            m_prev = (m_prev + [x0_pred(x, t)])[-2:]
    return ts, torch.stack(states)


def cfg_reference(cond, uncond, scale, renorm):
    out = []
    for i in range(cond.shape[0]):
        c, u = cond[i:i + 1], uncond[i:i + 1]
        v = u + scale * (c - u)
        if float(renorm) > 0.0:
            dims = tuple(range(1, c.dim()))
            ori = torch.linalg.vector_norm(c, dim=dims, keepdim=True)
            max_new = ori * float(renorm)
            new = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
            if new.item() >= max_new.item():
                v = v * (max_new / new)
        out.append(v)
    return torch.cat(out)


def main():
    check_versions(PINS)
    torch.set_num_threads(1)
    versions = dict(PINS)
    fx = FixtureFile(os.path.join(OUT, "sampling.safetensors"), "tools/reference/make_sampling_fixtures.py", versions)

    for n, s in [(18, 6.0), (2, 6.0), (30, 3.0), (28, 1.0), (50, 6.0)]:
        fx.add_case(f"grid.n{n}_s{int(s)}", {"t": official_grid(n, s)}, n=n, shift=s)
    for n, s in [(8, 6.0), (20, 6.0)]:
        fx.add_case(f"dpm_grid.n{n}_s{int(s)}", {"sigma": dpm_timesteps(n, s)}, steps=n, shift=s)

    shape = [1, 2, 3, 4]
    field = Field("toy_field", shape)
    x0 = torch.randn(shape, generator=generator("toy_x0"))
    tensors = {"a": field.a, "b": field.b, "x0": x0}
    for method, n, s in [("euler", 10, 6.0), ("midpoint", 18, 6.0), ("euler", 5, 1.0), ("midpoint", 7, 3.0),
                         ("rk4", 8, 6.0)]:
        grid = official_grid(n, s)
        traj = run_odeint(field, x0.clone(), grid, method)
        fx.add_case(f"{method}.n{n}_s{int(s)}", dict(tensors, grid=grid, states=traj), method=method, n=n, shift=s)
    for steps, s in [(8, 6.0), (3, 6.0), (2, 1.0)]:
        ts, states = run_dpm(field, x0.clone(), steps, s)
        fx.add_case(f"dpm.steps{steps}_s{int(s)}", dict(tensors, sigma=ts, states=states), steps=steps, shift=s)

    g = generator("cfg")
    cond = torch.randn(3, 4, 5, 6, generator=g)
    uncond = cond * 0.5 + 0.8 * torch.randn(3, 4, 5, 6, generator=g)
    uncond[1] = cond[1] * 0.9  # sample 1: guidance pushes along v_c -> norm grows past the cap
    uncond[2] = cond[2] * 1.1  # sample 2: guidance shrinks the norm -> below the cap, untouched
    for scale, renorm in [(4.5, 1.0), (5.0, 0.0), (2.0, 1.3), (1.0, 1.0)]:
        out = cfg_reference(cond, uncond, scale, renorm)
        fx.add_case(f"cfg.scale{scale}_renorm{renorm}", {"cond": cond, "uncond": uncond, "out": out},
                    scale=scale, renorm=renorm)
    size = fx.save()
    print(f"wrote {fx.path} ({size} bytes)")

    # noise: this process (the machine's best CPU capability, AVX2 here) and a DEFAULT child
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        sys.exit(f"the vectorised randn reference needs an AVX2 or AVX-512 CPU; torch reports {cap}")
    nf = FixtureFile(os.path.join(OUT, "noise.safetensors"), "tools/reference/make_sampling_fixtures.py", versions)
    native = noise_values(NOISE_CASES)
    tmp = os.path.join(OUT, ".default_noise.pt")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--child", tmp], env=env, check=True)
    default = torch.load(tmp)
    os.remove(tmp)
    specs = {name: (seed, shape, keep) for name, seed, shape, keep in NOISE_CASES}
    for name in native:
        if name in specs:
            seed, shp, keep = specs[name]
            params = {"seed": seed, "shape": shp, "keep": keep}
        else:
            params = {"seed": 99, "calls": [3, 5, 20, 1]}
        nf.add_case(f"randn.{name}", {"avx2": native[name], "default": default[name]}, **params)
    nf.meta["native_capability"] = cap
    size = nf.save()
    print(f"wrote {nf.path} ({size} bytes); capability {cap}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        child_main(sys.argv[2])
    else:
        main()
