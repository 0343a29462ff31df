#!/usr/bin/env python3
"""Reference fixtures for the FLUX VAE (issue #4): diffusers `AutoencoderKL` on a tiny config with
the FLUX.1-dev structure (16 latent channels, mid-block attention, no quant convs, 4 levels,
2 ResNets per encoder level / 3 per decoder level, channel changes with 1x1 shortcuts).

Pinned versions (asserted at start):
    torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0, numpy 2.4.6, pillow 13.0.0

Regenerate (from the repository root):
    /work/venv/bin/python tools/reference/make_vae_fixtures.py
(any venv with the pinned versions: `pip install torch==2.15.0 diffusers==0.42.1
safetensors==0.8.0 numpy==2.4.6 pillow==13.0.0`). CPU only, about 15 s. Reruns give the same
tensors and metadata; the bytes of a safetensors header may differ in key order (the writer's
metadata map is unordered).

Writes Tests/Fixtures/vae/:
  - config.json                  diffusers config of the tiny model
  - diffusers.safetensors        weights, diffusers naming (bf16 storage: half the size; the fp32
                                 reference runs on these same bf16 values widened to fp32, so the
                                 numbers are identical)
  - ae.safetensors               the same numbers in the BFL/ComfyUI `ae.safetensors` naming
                                 (attention q/k/v/proj_out as 1x1 conv weights [C, C, 1, 1],
                                 decoder up levels in reversed order), stored as fp16 when every
                                 value converts exactly (checked; else bf16), to keep it small
  - reference.safetensors        cases (see common.FixtureFile):
      decode.f32 / decode.bf16:  x = NewBie latent [1,16,5,7]; out = decoder(x / 0.3611 + 0.1159)
      encode.f32 / encode.bf16:  x = image [1,3,40,56] in [-1,1]; out = (mean - 0.1159) * 0.3611
      decode_raw.f32:            z = VAE latent [1,16,6,4]; out = decoder(z) (no scaling)
      encode_raw.f32:            x = image [1,3,33,47] (not a multiple of 8); out = mean|logvar
                                 (all 32 channels of the encoder output)
  - pil.png                      an RGB PNG written by PIL with text chunks, and
    pil_pixels.safetensors       its pixels as u8 [H, W, 3] plus the text as metadata, for the
                                 Swift PNG reader test.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator  # noqa: E402

PINS = {"torch": "2.15.0", "diffusers": "0.42.1", "safetensors": "0.8.0", "numpy": "2.4.6", "PIL": "13.0.0"}
check_versions(PINS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "vae")
SCALE, SHIFT = 0.3611, 0.1159

CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 32, 32], layers_per_block=2, act_fn="silu", norm_num_groups=4,
    sample_size=64, scaling_factor=SCALE, shift_factor=SHIFT, force_upcast=True,
    use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)


def build_model():
    torch.manual_seed(1234)
    model = AutoencoderKL(**CONFIG).eval()
    g = generator("vae.weights")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                # conv / linear weights: diffusers' default (Kaiming-uniform) init times 3. With the
                # default scale this deep random net amplifies bf16 rounding so much that two
                # bf16 runs differing only in where the latent scaling rounds differ by 2.2e-2
                # (diffusers against itself), above the 2e-2 bf16 tolerance, so a bf16 comparison
                # could not tell a correct implementation from a wrong one. Times 3 brings
                # diffusers' own bf16-vs-fp32 error to about 1e-2 (decode and encode).
                p.mul_(3.0)
            # every parameter is rounded to bf16 so the bf16-stored file holds exact values
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def to_ae_naming(sd, levels):
    """diffusers AutoencoderKL state dict -> BFL `ae.safetensors` names."""
    out = {}

    def resnet(src, dst):
        for k in ("norm1", "conv1", "norm2", "conv2"):
            for s in ("weight", "bias"):
                out[f"{dst}.{k}.{s}"] = sd.pop(f"{src}.{k}.{s}")
        for s in ("weight", "bias"):
            key = f"{src}.conv_shortcut.{s}"
            if key in sd:
                out[f"{dst}.nin_shortcut.{s}"] = sd.pop(key)

    def mid(part):
        resnet(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1")
        resnet(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")
        a = f"{part}.mid_block.attentions.0"
        b = f"{part}.mid.attn_1"
        for s in ("weight", "bias"):
            out[f"{b}.norm.{s}"] = sd.pop(f"{a}.group_norm.{s}")
        for src, dst in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            w = sd.pop(f"{a}.{src}.weight")
            out[f"{b}.{dst}.weight"] = w.reshape(w.shape[0], w.shape[1], 1, 1)
            out[f"{b}.{dst}.bias"] = sd.pop(f"{a}.{src}.bias")

    for part in ("encoder", "decoder"):
        for k in ("conv_in", "conv_out"):
            for s in ("weight", "bias"):
                out[f"{part}.{k}.{s}"] = sd.pop(f"{part}.{k}.{s}")
        for s in ("weight", "bias"):
            out[f"{part}.norm_out.{s}"] = sd.pop(f"{part}.conv_norm_out.{s}")
        mid(part)
    for i in range(levels):
        for j in range(CONFIG["layers_per_block"]):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        if i < levels - 1:
            for s in ("weight", "bias"):
                out[f"encoder.down.{i}.downsample.conv.{s}"] = sd.pop(f"encoder.down_blocks.{i}.downsamplers.0.conv.{s}")
    for j in range(levels):
        k = levels - 1 - j
        for r in range(CONFIG["layers_per_block"] + 1):
            resnet(f"decoder.up_blocks.{j}.resnets.{r}", f"decoder.up.{k}.block.{r}")
        if j < levels - 1:
            for s in ("weight", "bias"):
                out[f"decoder.up.{k}.upsample.conv.{s}"] = sd.pop(f"decoder.up_blocks.{j}.upsamplers.0.conv.{s}")
    assert not sd, f"unconverted tensors: {sorted(sd)}"
    return out


def smooth_image(shape, name):
    """A smooth-ish image in [-1, 1] (low-frequency waves plus a little noise)."""
    g = generator(name)
    _, c, h, w = shape
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(1, c, 1, 1, generator=g) * 6.28
    img = 0.7 * torch.sin(3.0 * xx + 2.0 * yy + phase) + 0.1 * torch.randn(shape, generator=g)
    return img.clamp(-1, 1)


def main():
    os.makedirs(OUT, exist_ok=True)
    model = build_model()
    levels = len(CONFIG["block_out_channels"])

    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump({"_class_name": "AutoencoderKL", **CONFIG}, f, indent=2, sort_keys=True)
        f.write("\n")

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()},
              os.path.join(OUT, "diffusers.safetensors"))
    ae = to_ae_naming(dict(sd), levels)
    # fp16 storage (a third dtype for the loader) when every value survives the round trip exactly
    ae16 = {k: v.to(torch.float16) for k, v in ae.items()}
    exact = all(torch.equal(ae16[k].float(), v) for k, v in ae.items())
    save_file({k: (ae16[k] if exact else v.to(torch.bfloat16)).contiguous() for k, v in ae.items()},
              os.path.join(OUT, "ae.safetensors"))
    print("ae.safetensors stored as", "fp16" if exact else "bf16")

    fx = FixtureFile(os.path.join(OUT, "reference.safetensors"), "tools/reference/make_vae_fixtures.py", PINS)
    model_bf16 = build_model().to(torch.bfloat16)

    x_lat = torch.randn(1, 16, 5, 7, generator=generator("decode.x"))
    img = smooth_image((1, 3, 40, 56), "encode.x")
    with torch.no_grad():
        out = model.decode(x_lat / SCALE + SHIFT).sample
        fx.add_case("decode.f32", {"x": x_lat, "out": out}, dtype="f32", scaled=True)
        xb = x_lat.to(torch.bfloat16)
        outb = model_bf16.decode(xb / SCALE + SHIFT).sample
        fx.add_case("decode.bf16", {"x": xb, "out": outb}, dtype="bf16", scaled=True,
                    note="latent scaling done in bf16 as diffusers would; Swift scales in its compute dtype")

        mean = model.encode(img).latent_dist.mean
        fx.add_case("encode.f32", {"x": img, "out": (mean - SHIFT) * SCALE}, dtype="f32", scaled=True)
        ib = img.to(torch.bfloat16)
        meanb = model_bf16.encode(ib).latent_dist.mean
        fx.add_case("encode.bf16", {"x": ib, "out": (meanb - SHIFT) * SCALE}, dtype="bf16", scaled=True)

        z = torch.randn(1, 16, 6, 4, generator=generator("decode_raw.x"))
        fx.add_case("decode_raw.f32", {"x": z, "out": model.decode(z).sample}, dtype="f32", scaled=False)
        img2 = smooth_image((1, 3, 33, 47), "encode_raw.x")
        h = model.encoder(img2)  # no quant_conv in this config: the moments are the encoder output
        fx.add_case("encode_raw.f32", {"x": img2, "out": h}, dtype="f32", scaled=False)
    size = fx.save()

    # PNG written by an independent writer (PIL), for the Swift reader test.
    g = generator("png.pixels")
    hh, ww = 13, 21
    px = (torch.rand(hh, ww, 3, generator=g) * 256).floor().clamp(0, 255).to(torch.uint8).numpy()
    px[0, 0] = [0, 0, 0]
    px[0, 1] = [255, 255, 255]
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "a cat <tag>, 1girl & \"quotes\"")
    info.add_text("seed", "42")
    info.add_itxt("comment", "unicode: caf\u00e9 \u732b", lang="", tkey="")
    Image.fromarray(px, "RGB").save(os.path.join(OUT, "pil.png"), pnginfo=info)
    back = np.array(Image.open(os.path.join(OUT, "pil.png")).convert("RGB"))
    assert (back == px).all()
    save_file({"pixels": torch.from_numpy(px.copy())}, os.path.join(OUT, "pil_pixels.safetensors"),
              metadata={"prompt": "a cat <tag>, 1girl & \"quotes\"", "seed": "42",
                        "comment": "unicode: caf\u00e9 \u732b"})

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"reference.safetensors {size} bytes; Tests/Fixtures/vae total {total} bytes")


if __name__ == "__main__":
    main()
