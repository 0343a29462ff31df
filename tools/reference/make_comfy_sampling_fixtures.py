#!/usr/bin/env python3
"""Reference fixtures for ComfyUI's sampling of flow models (issue 16 item 5).

ComfyUI's own code is run here, imported from a ComfyUI checkout (ComfyUI is not on PyPI): its
model sampling as the `ModelSamplingAuraFlow` node sets it (ModelSamplingDiscreteFlow + CONST,
shift 6, multiplier 1), its schedulers (`comfy.samplers.calculate_sigmas`: simple, normal, karras,
beta) and its KSampler path (`comfy.samplers.sampler_object(name).sample`: noise scaling, the
k-diffusion sampler in comfy/k_diffusion/sampling.py, inverse noise scaling) with a stand-in for
the NewBie DiT:
    velocity v(x, t) = -0.7 tanh(x) + 1.3 (1 - t) m            (m a fixed tensor, t = 1 - sigma)
wrapped as ComfyUI's Lumina 2 model is: model output = -v(x, 1 - timestep), denoised by CONST
(x - sigma * output). No guidance (the stand-in is the guided velocity). Ancestral noise comes
from `default_noise_sampler(x, seed)` with the KSampler's seed in extra_args, the SDE samplers'
(dpmpp_2m_sde, dpmpp_sde) from ComfyUI's BrownianTreeNoiseSampler over torchsde.

Pinned: ComfyUI checkout Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832 (2025-10-12),
torch 2.15.0, torchsde 0.2.6 (ComfyUI's sampling module imports it), scipy 1.17.1 (the beta
scheduler), numpy 2.4.6, safetensors 0.8.0.

Regenerate (from the repository root; CPU only, seconds):
    git clone https://github.com/Comfy-Org/ComfyUI /tmp/comfyui && git -C /tmp/comfyui checkout a125cd84b054a57729b5eecab930ca9408719832
    /work/venv/bin/pip install torchsde==0.2.6
    COMFYUI=/tmp/comfyui /work/venv/bin/python tools/reference/make_comfy_sampling_fixtures.py

Writes Tests/Fixtures/sampling/comfy_reference.safetensors, cases (common.py FixtureFile layout):
  model.sigmas              the model sampling's 1000 sigmas (shift 6)
  sched.<scheduler>.<n>     sigmas of each scheduler for n = 9 and 20 steps
  inputs                    noise [1,16,6,4] (torch.randn for seed 42 on the CPU, as ComfyUI's
                            prepare_noise), m [1,16,6,4]
  seedseq                   NumPy SeedSequence(42, spawn_key (5, 3), pool 24).generate_state(4) and
                            SeedSequence(2^40 + 7, pool 24).generate_state(3)
  brownian                  torchsde BrownianTree(t0 0.03, w0 0 [1,16,6,4], t1 1, entropy 42) over
                            four intervals
  run.<sampler>.<scheduler> 9 steps: "states" [9, 1,16,6,4] the state before each step (the
                            sampler callback's x) and "out" the latent returned
"""
import importlib.metadata
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator  # noqa: E402

PINS = {"torch": "2.15.0", "numpy": "2.4.6", "safetensors": "0.8.0", "scipy": "1.17.1"}
check_versions(PINS)
if importlib.metadata.version("torchsde") != "0.2.6":
    sys.exit("reference fixtures need torchsde 0.2.6")
PINS["torchsde"] = "0.2.6"
COMFY_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"
PINS["comfyui"] = COMFY_COMMIT

COMFY = os.environ.get("COMFYUI")
if not COMFY or not os.path.isdir(os.path.join(COMFY, "comfy")):
    sys.exit("set COMFYUI to a ComfyUI checkout at commit " + COMFY_COMMIT)
sys.path.insert(0, COMFY)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402
comfy.options.enable_args_parsing()
import torch  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402

torch.set_grad_enabled(False)
torch.set_num_threads(1)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "sampling", "comfy_reference.safetensors")
SHIFT, SEED, STEPS = 6.0, 42, 9
SCHEDULERS = ["simple", "normal", "karras", "beta"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "res_multistep"]


class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    """What ModelSamplingAuraFlow installs (ModelSamplingSD3.patch with multiplier 1)."""


def model_sampling():
    ms = FlowSampling()
    ms.set_parameters(shift=SHIFT, multiplier=1.0)
    return ms


class StandIn:
    """The model as ComfyUI's sampler sees it after the CFG guider: called with (x, sigma,
    model_options, seed), returns the denoised latent; `inner_model.model_sampling` is the flow
    model sampling (the euler_ancestral RF switch looks there)."""

    def __init__(self, ms, m):
        self.inner_model = types.SimpleNamespace(model_sampling=ms)
        self.model_patcher = types.SimpleNamespace(get_model_object=lambda name: {"model_sampling": ms}[name])
        self.ms, self.m = ms, m

    def __call__(self, x, sigma, model_options={}, seed=None):
        t = 1.0 - self.ms.timestep(sigma)                     # Lumina 2: t = 1 - timesteps
        v = -0.7 * torch.tanh(x) + (1.3 * (1.0 - t)).view(-1, 1, 1, 1) * self.m
        out = -v                                              # Lumina 2 returns -x
        return self.ms.calculate_denoised(sigma, out, x)


def main():
    ms = model_sampling()
    ref = FixtureFile(OUT, "tools/reference/make_comfy_sampling_fixtures.py", PINS)
    ref.add_case("model.sigmas", {"sigmas": ms.sigmas.clone()}, shift=SHIFT)
    for name in SCHEDULERS:
        for n in (STEPS, 20):
            s = comfy.samplers.calculate_sigmas(ms, name, n)
            ref.add_case(f"sched.{name}.{n}", {"sigmas": s.float()}, steps=n)
    shape = [1, 16, 6, 4]
    noise = torch.randn(shape, generator=torch.manual_seed(SEED), device="cpu")   # comfy.sample.prepare_noise
    m = torch.randn(shape, generator=generator("comfy.m"))
    ref.add_case("inputs", {"noise": noise, "m": m}, seed=SEED, shift=SHIFT, steps=STEPS)
    # the SDE noise's parts: NumPy's SeedSequence words and torchsde's Brownian tree
    import numpy as np
    import torchsde
    words = np.random.SeedSequence(entropy=SEED, spawn_key=(5, 3), pool_size=24).generate_state(4)
    big = np.random.SeedSequence(entropy=2 ** 40 + 7, pool_size=24).generate_state(3)
    ref.add_case("seedseq", {"words": torch.tensor(words.astype(np.int64)), "big": torch.tensor(big.astype(np.int64))})
    tree = torchsde.BrownianTree(torch.tensor(0.03, dtype=torch.float32), torch.zeros(shape), torch.tensor(1.0, dtype=torch.float32), entropy=SEED)
    queries = [(0.5, 0.75), (0.3, 0.31), (0.9, 1.0), (0.03, 0.2)]
    ref.add_case("brownian", {"w": torch.stack([tree(torch.tensor(a, dtype=torch.float32).item(), torch.tensor(b, dtype=torch.float32).item()) for a, b in queries])},
                 queries=[[float(torch.tensor(a, dtype=torch.float32)), float(torch.tensor(b, dtype=torch.float32))] for a, b in queries], t0=float(torch.tensor(0.03, dtype=torch.float32)))
    for sname in SAMPLERS:
        for sched in SCHEDULERS:
            sigmas = comfy.samplers.calculate_sigmas(ms, sched, STEPS)
            states = []
            sampler = comfy.samplers.sampler_object(sname)
            out = sampler.sample(StandIn(ms, m), sigmas, {"seed": SEED, "model_options": {}},
                                 lambda i, denoised, x, total: states.append(x.clone()),
                                 noise.clone(), latent_image=torch.zeros(shape), denoise_mask=None, disable_pbar=True)
            assert torch.isfinite(out).all(), (sname, sched)
            ref.add_case(f"run.{sname}.{sched}", {"states": torch.stack(states), "out": out.float()},
                         sampler=sname, scheduler=sched, steps=len(sigmas) - 1)
            print(f"run.{sname}.{sched}: {len(sigmas) - 1} steps, |out| {float(out.abs().mean()):.4f}")
    size = ref.save()
    print(f"{os.path.relpath(OUT, ROOT)}: {size} bytes")


if __name__ == "__main__":
    main()
