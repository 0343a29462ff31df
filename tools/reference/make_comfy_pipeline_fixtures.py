#!/usr/bin/env python3
"""Reference for `newbie generate --preset comfyui` on the tiny random model (issue 16 item 4).

The run ComfyUI's official NewBie template makes, on the tiny model `newbie make-tiny-model`
writes (seed 0), with the published Python models of make_pipeline_fixtures.py and ComfyUI's own
sampling code:
  - text: the template's system prompt + prompt for Gemma 3 (hidden_states[-2]) AND for Jina
    (ComfyUI's NewBie text encoder hands both the same text); the negative prompt is the
    template's, as is, for both;
  - DiT: diffusers Lumina2 + NewBie's CLIP pathway (make_dit_fixtures), wrapped as ComfyUI's
    Lumina 2 model (t = 1 - sigma, output = -velocity), denoised by CONST, guidance on the denoised
    latents (ComfyUI's cfg_function: uncond + (cond - uncond) * 5.5), every step;
  - sampling: ComfyUI's KSampler path (`comfy.samplers.sampler_object("res_multistep")`) over
    `calculate_sigmas(model_sampling, "simple", 20)` with ModelSamplingAuraFlow's model sampling
    (shift 6); noise torch.manual_seed(seed); torch.randn on the CPU (comfy.sample.prepare_noise);
  - VAE: diffusers AutoencoderKL on latent / 0.3611 + 0.1159 (ComfyUI's Flux latent format),
    clamp((x + 1) / 2, 0, 1), then SaveImage's np.clip(255. * image, 0, 255).astype(np.uint8).
All float32, at 32 x 48 pixels (the preset's 1024 x 1536 overridden, as explicit options are).

Pins: as make_pipeline_fixtures.py, plus ComfyUI Comfy-Org/ComfyUI a125cd84 and torchsde 0.2.6
(see make_comfy_sampling_fixtures.py).
Run:
  swift run newbie make-tiny-model /tmp/newbie-tiny
  COMFYUI=/tmp/comfyui /work/venv/bin/python tools/reference/make_comfy_pipeline_fixtures.py /tmp/newbie-tiny
Writes Tests/Fixtures/pipeline/comfy_reference.safetensors.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_pipeline_fixtures as P  # noqa: E402  (pinned versions checked by its imports)
import make_dit_fixtures as D  # noqa: E402

COMFY = os.environ.get("COMFYUI")
if not COMFY or not os.path.isdir(os.path.join(COMFY, "comfy")):
    sys.exit("set COMFYUI to a ComfyUI checkout at commit a125cd84b054a57729b5eecab930ca9408719832")
sys.path.insert(0, COMFY)
model_dir = sys.argv[1]
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options  # noqa: E402
comfy.options.enable_args_parsing()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import types  # noqa: E402
import comfy.model_sampling  # noqa: E402
import comfy.samplers  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.set_grad_enabled(False)
SYSTEM = ("You are an assistant designed to generate high-quality anime images with the highest degree of "
          "image-text alignment based on xml format textual prompts. <Prompt Start>\n")
NEGATIVE = "You are an assistant designed to generate low-quality images based on textual prompts. <Prompt Start>"
PROMPT = "1girl, red eyes, smile"
W, H, SEED, STEPS, CFG, SHIFT = 32, 48, 5, 20, 5.5, 6.0
OUT = os.path.join(P.OUT, "comfy_reference.safetensors")


class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass


def main():
    out = {}
    (gc_ids, gc), (gu_ids, gu) = P.gemma(model_dir, [SYSTEM + PROMPT, NEGATIVE])
    (jc_ids, jc), (ju_ids, ju) = P.jina(model_dir, [SYSTEM + PROMPT, NEGATIVE])
    out.update({"gemma_ids": gc_ids, "gemma_cond": gc, "gemma_uncond": gu, "jina_ids": jc_ids, "jina_cond": jc, "jina_uncond": ju})
    m = P.dit(model_dir)
    vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae")).eval()
    L = max(gc.shape[0], gu.shape[0])
    cap = torch.zeros(2, L, gc.shape[1])
    cap[0, :gc.shape[0]], cap[1, :gu.shape[0]] = gc, gu
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, :gc.shape[0]], mask[1, :gu.shape[0]] = True, True
    clip = torch.stack([jc, ju])

    ms = FlowSampling()
    ms.set_parameters(shift=SHIFT, multiplier=1.0)
    sigmas = comfy.samplers.calculate_sigmas(ms, "simple", STEPS)

    class Guided:
        """The CFG guider's view for the sampler: denoised latent from (x, sigma)."""
        inner_model = types.SimpleNamespace(model_sampling=ms)

        def __call__(self, x, sigma, model_options={}, seed=None):
            t = 1.0 - ms.timestep(sigma)
            v = D.forward(m, torch.cat([x, x]), torch.cat([t, t]), cap, mask, clip, torch.float32)
            dc = ms.calculate_denoised(sigma, -v[:1], x)
            du = ms.calculate_denoised(sigma, -v[1:], x)
            return du + (dc - du) * CFG

    shape = [1, 16, H // 8, W // 8]
    noise = torch.randn(shape, generator=torch.manual_seed(SEED), device="cpu")
    out["noise"] = noise
    states = []
    latent = comfy.samplers.sampler_object("res_multistep").sample(
        Guided(), sigmas, {"seed": SEED, "model_options": {}}, lambda i, d, x, n: states.append(x.clone()),
        noise.clone(), latent_image=torch.zeros(shape), denoise_mask=None, disable_pbar=True)
    out["states"] = torch.stack(states)
    out["latent"] = latent.float().contiguous()
    img = vae.decode(latent / 0.3611 + 0.1159).sample
    unit = torch.clamp((img + 1.0) / 2.0, min=0.0, max=1.0)[0].movedim(0, -1)     # [H, W, 3]
    pixels = np.clip(255. * unit.cpu().numpy(), 0, 255).astype(np.uint8)         # SaveImage
    out["pixels"] = torch.from_numpy(pixels.copy())
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata={
        "prompt": PROMPT, "system_prompt": SYSTEM, "negative_prompt": NEGATIVE, "width": str(W), "height": str(H),
        "seed": str(SEED), "steps": str(STEPS), "cfg": str(CFG), "shift": str(SHIFT), "sampler": "res_multistep",
        "scheduler": "simple", "tiny_model_seed": "0", "comfyui": "a125cd84b054a57729b5eecab930ca9408719832",
        "generator": "tools/reference/make_comfy_pipeline_fixtures.py", "sigmas": json.dumps([float(s) for s in sigmas])})
    print("wrote", OUT, "latent std", float(latent.std()))


if __name__ == "__main__":
    main()
