#!/usr/bin/env python3
"""Reference fixtures for the NextDiT (NewBie DiT, issue #3).

Backbone: diffusers `Lumina2Transformer2DModel` (PyPI, 0.42.1) on tiny configurations.
diffusers 0.42.1 has NO pooled CLIP projection (PR #12803 "pooled_projection_dim" is not in it:
its `Lumina2CombinedTimestepCaptionEmbedding` only builds `time_proj`, `timestep_embedder` and
`caption_embedder`), so this script adds NewBie's CLIP pathway around diffusers' pieces, following
spec section 1.4 steps 3-4 and the official `NextDiT_CLIP` class:
    clip_emb = Linear(clip, clip)(RMSNorm(clip)(clip_text_pooled))      (diffusers RMSNorm, nn.Linear)
    c        = Linear(min(dim,1024)+clip, min(dim,1024))(SiLU(cat[t_emb, clip_emb]))
and `c` replaces diffusers' `temb` everywhere it is used (noise refiner, main layers, norm_out).
This is done by wrapping `time_caption_embed` (see `NewBieTimeCaptionEmbed`). `forward_with_cfg`
(spec 1.7, official semantics: t[0] < cfg_trunc, per-sample L2 norm over (C,H,W), cap at
renorm_cfg * ||v_c||) is not in diffusers either and is written here from the spec / official code.

Spec 1.3-1.7 compared with diffusers 0.42.1 line by line (what differs, and why it does not matter
or how it is handled here):
  - timestep: diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` with the
    default scale 1 and max_period 10000 gives exp(-ln(1e4) k/128) and [cos, sin]: identical to the
    official cos-first embedding. We pass t in [0,1] directly (the official convention; the
    diffusers *pipeline* passes 1 - sigma, but the model itself uses t as given). Asserted below.
  - RoPE: diffusers builds complex tables (float64 frequencies, torch.polar), positions
    (k,0,0) for caption tokens, (cap_len, row, col) for image tokens, zeros for padded caption
    positions of the context refiner: identical to spec 1.5. It rotates in complex128 (float64);
    the official code rotates in float32 - differences ~1e-7.
  - q/k RMSNorm eps: diffusers 1e-5, official 1e-6 or 1e-5 (spec: unconfirmed, irrelevant). We
    use 1e-5 here and in Swift's default.
  - clip_text_pooled_proj RMSNorm eps: official `RMSNorm(clip_text_dim)` takes its class default;
    ComfyUI uses norm_eps = 1e-5. We use 1e-5.
  - Attention masks: diffusers passes no mask to the noise refiner and, when all joint sequences
    have the same length, none to the main layers; the official code always masks. Identical
    results (nothing is masked in those cases).
  - diffusers' joint-sequence padding positions get RoPE ids (0,0,0) (cos 1, sin 0); official the
    same. They are masked keys and discarded outputs.
  - norm_final: official checkpoints carry it; unused by both. Written into the official-naming
    file here so that the Swift loader has to accept and ignore it.
  - FFN hidden size: diffusers and official both round (ffn_dim_multiplier * 4 dim) up to
    multiple_of; the tiny models use ffn_dim_multiplier 0.5 and multiple_of 32, so the hidden size
    (160) is not 4*dim and must be read from the weights.
  - forward_with_cfg renorm uses `.item()` officially (cond half of batch size 1); the fixtures
    use one cond + one uncond sample.

Pinned versions (asserted at start):
    torch 2.15.0, diffusers 0.42.1, safetensors 0.8.0, numpy 2.4.6

Regenerate (from the repository root; CPU only, a few seconds):
    /work/venv/bin/python tools/reference/make_dit_fixtures.py
(any venv with `pip install torch==2.15.0 diffusers==0.42.1 safetensors==0.8.0 numpy==2.4.6`).

Writes Tests/Fixtures/dit/:
  official/model.safetensors + official/config.json
        model A, official naming (fused qkv, adaLN_modulation.1, final_layer.*, norm_final),
        bf16 storage; every value is bf16-exact, so the fp32 reference runs on the same numbers.
        config.json in the official keys (spec 2.1).
  comfy_a_fp16.safetensors
        model A again, official naming with the ComfyUI prefix `model.diffusion_model.`, fp16
        storage (checked exact), NO config.json next to it (the loader must infer the config from
        the tensor shapes: head_dim 12 -> axes [4,4,4]).
  diffusers/diffusion_pytorch_model.safetensors + diffusers/config.json
        model B (other seed, RoPE axes [2,4,6]), diffusers naming (to_q/to_k/to_v, norm1.linear,
        norm_out.linear_1/2, time_caption_embed.*; clip pathway under time_caption_embed as in
        PR #12803), fp32 storage; config.json in diffusers keys.
  reference.safetensors  cases (tools/reference/common.py FixtureFile layout):
      inputs: x [2,16,16,24] (non-square latent), t [2] (different per sample), cap [2,9,32]
      (sample 0 has 9 real tokens, sample 1 has 5; its 4 padded positions hold non-zero garbage),
      mask [2,9], clip [2,32]
      a.fwd.f32, a.fwd.bf16, a.fwd.f16, b.fwd.f32   single forwards (out [2,16,16,24], fp32)
      a.cfg_renorm.f32 / .bf16: t=0.2 < trunc 0.25, scale 4, renorm 1 (renorm active: asserted)
      a.cfg_trunc.f32 / .bf16:  t=0.6 >= trunc 0.25 -> conditional half only
      a.cfg_plain.f32:          t=0.2, scale 2.5, trunc 100, renorm 0
      CFG cases: x_cfg = [x0, x0], t_cfg = [t, t], cap/mask/clip as above (row 0 cond, row 1
      uncond); out = cat[v, v].
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator  # noqa: E402

PINS = {"torch": "2.15.0", "diffusers": "0.42.1", "safetensors": "0.8.0", "numpy": "2.4.6"}
check_versions(PINS)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import Lumina2Transformer2DModel  # noqa: E402
from diffusers.models.normalization import RMSNorm  # noqa: E402

torch.set_grad_enabled(False)
torch.set_num_threads(1)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "dit")

DIM, HEADS, KV_HEADS = 72, 6, 2          # head_dim 12, 3 query heads per KV head (like the 3.5B)
CAP_DIM, CLIP_DIM, IN_CH = 32, 32, 16
N_LAYERS, N_REFINER = 2, 1
MULTIPLE_OF, FFN_MULT = 32, 0.5          # FFN hidden = 32 * ceil(0.5 * 288 / 32) = 160
NORM_EPS = 1e-5
AXES_LENS = [64, 32, 32]
ADALN = min(DIM, 1024)


class NewBieTimeCaptionEmbed(nn.Module):
    """diffusers' Lumina2CombinedTimestepCaptionEmbedding plus NewBie's CLIP pathway (official
    NextDiT_CLIP.forward): returns (c, caption_embed) where c = time_text_embed(cat[t_emb, clip_emb])."""

    def __init__(self, inner, clip_dim, adaln_dim):
        super().__init__()
        self.inner = inner
        self.clip_text_pooled_proj = nn.Sequential(RMSNorm(clip_dim, eps=NORM_EPS), nn.Linear(clip_dim, clip_dim, bias=True))
        self.time_text_embed = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim + clip_dim, adaln_dim, bias=True))
        self.clip_text_pooled = None  # set before each forward

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        t_emb, cap = self.inner(hidden_states, timestep, encoder_hidden_states)
        clip_emb = self.clip_text_pooled_proj(self.clip_text_pooled)
        c = self.time_text_embed(torch.cat([t_emb, clip_emb], dim=-1))
        return c, cap


def build(axes, seed):
    m = Lumina2Transformer2DModel(
        patch_size=2, in_channels=IN_CH, hidden_size=DIM, num_layers=N_LAYERS, num_refiner_layers=N_REFINER,
        num_attention_heads=HEADS, num_kv_heads=KV_HEADS, multiple_of=MULTIPLE_OF, ffn_dim_multiplier=FFN_MULT,
        norm_eps=NORM_EPS, axes_dim_rope=tuple(axes), axes_lens=tuple(AXES_LENS), cap_feat_dim=CAP_DIM)
    m.time_caption_embed = NewBieTimeCaptionEmbed(m.time_caption_embed, CLIP_DIM, ADALN)
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if p.ndim == 1 and ("norm" in name and "linear" not in name or name.endswith("clip_text_pooled_proj.0.weight")
                            or name.endswith("caption_embedder.0.weight")):
            v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)          # norm weights around 1
        elif p.ndim == 1:
            v = 0.1 * torch.randn(p.shape, generator=g)                # biases
        else:
            v = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])
            if "norm1.linear" in name or "norm_out.linear_1" in name:
                v = v * 1.5                                            # non-trivial gates and scales
        p.copy_(v)
    return m.eval()


def bf16_exact(m):
    """Rounds every parameter to bf16; magnitudes below fp16's normal range (2^-14) become 0, so
    the values are also exact in fp16 (for the fp16 ComfyUI-style copy)."""
    for p in m.parameters():
        v = p.to(torch.bfloat16).to(torch.float32)
        v[v.abs() < 2.0 ** -14] = 0
        p.copy_(v)
    return m


def diffusers_state(m):
    sd = {}
    for k, v in m.state_dict().items():
        k = k.replace("time_caption_embed.inner.", "time_caption_embed.")
        sd[k] = v.detach().clone().contiguous()
    return sd


def official_state(m):
    """Spec 2.4 mapping, diffusers -> official (fused qkv rows Q|K|V)."""
    d = diffusers_state(m)
    o = {}
    simple = {
        "time_caption_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_caption_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "time_caption_embed.caption_embedder.": "cap_embedder.",
        "time_caption_embed.clip_text_pooled_proj.": "clip_text_pooled_proj.",
        "time_caption_embed.time_text_embed.": "time_text_embed.",
        "norm_out.linear_1.": "final_layer.adaLN_modulation.1.",
        "norm_out.linear_2.": "final_layer.linear.",
        "x_embedder.": "x_embedder.",
    }
    for k, v in d.items():
        done = False
        for a, b in simple.items():
            if k.startswith(a):
                o[b + k[len(a):]] = v
                done = True
        if done:
            continue
        parts = k.split(".")
        block, rest = ".".join(parts[:2]), ".".join(parts[2:])
        assert parts[0] in ("layers", "noise_refiner", "context_refiner"), k
        if rest in ("attn.to_k.weight", "attn.to_v.weight"):
            continue
        if rest == "attn.to_q.weight":
            o[block + ".attention.qkv.weight"] = torch.cat(
                [d[block + ".attn.to_q.weight"], d[block + ".attn.to_k.weight"], d[block + ".attn.to_v.weight"]], 0)
            continue
        ren = {
            "attn.to_out.0.weight": "attention.out.weight",
            "attn.norm_q.weight": "attention.q_norm.weight",
            "attn.norm_k.weight": "attention.k_norm.weight",
            "feed_forward.linear_1.weight": "feed_forward.w1.weight",
            "feed_forward.linear_2.weight": "feed_forward.w2.weight",
            "feed_forward.linear_3.weight": "feed_forward.w3.weight",
            "norm1.norm.weight": "attention_norm1.weight",
            "norm1.weight": "attention_norm1.weight",
            "norm2.weight": "attention_norm2.weight",
            "ffn_norm1.weight": "ffn_norm1.weight",
            "ffn_norm2.weight": "ffn_norm2.weight",
            "norm1.linear.weight": "adaLN_modulation.1.weight",
            "norm1.linear.bias": "adaLN_modulation.1.bias",
        }
        o[block + "." + ren[rest]] = v
    g = torch.Generator().manual_seed(99)
    o["norm_final.weight"] = (1.0 + 0.2 * torch.randn(DIM, generator=g)).to(torch.bfloat16).to(torch.float32)
    return o


def forward(m, x, t, cap, mask, clip, dtype):
    mm = m.to(dtype)
    mm.time_caption_embed.clip_text_pooled = clip.to(dtype)
    out = mm(hidden_states=x.to(dtype), timestep=t.to(torch.float32), encoder_hidden_states=cap.to(dtype),
             encoder_attention_mask=mask, return_dict=False)[0]
    m.to(torch.float32)
    return out.float()


def forward_with_cfg(m, x, t, cap, mask, clip, scale, trunc, renorm, dtype):
    """Official NextDiT_CLIP.forward_with_cfg (spec 1.7), batch = [cond, uncond]."""
    n = x.shape[0] // 2
    info = {"renorm_applied": False, "cfg_used": False}
    if float(t[0]) < trunc:
        info["cfg_used"] = True
        out = forward(m, x, t, cap, mask, clip, dtype).to(dtype)   # model output is in the model dtype
        cond, uncond = out[:n], out[n:]
        v = uncond + scale * (cond - uncond)
        if renorm > 0:
            cn = torch.linalg.vector_norm(cond, dim=tuple(range(1, cond.ndim)), keepdim=True)
            mx = cn * float(renorm)
            vn = torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
            if vn.item() >= mx.item():
                v = v * (mx / vn)
                info["renorm_applied"] = True
    else:
        v = forward(m, x[:n], t[:n], cap[:n], mask[:n], clip[:n], dtype).to(dtype)
    return torch.cat([v, v], 0).float(), info


def check_timestep_embedding(m):
    t = torch.tensor([0.0, 0.3, 1.0])
    got = m.time_caption_embed.inner.time_proj(t)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t[:, None] * freqs[None]
    want = torch.cat([torch.cos(args), torch.sin(args)], -1)
    assert torch.allclose(got, want, atol=1e-6), "diffusers timestep embedding is not the official cos-first one"


def main():
    os.makedirs(os.path.join(OUT, "official"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "diffusers"), exist_ok=True)
    a = bf16_exact(build([4, 4, 4], seed=1))
    b = build([2, 4, 6], seed=2)
    check_timestep_embedding(a)

    # --- checkpoints ---
    oa = official_state(a)
    save_file({k: v.to(torch.bfloat16) for k, v in oa.items()}, os.path.join(OUT, "official", "model.safetensors"))
    with open(os.path.join(OUT, "official", "config.json"), "w") as f:
        json.dump({"model_type": "nextdit_clip", "patch_size": 2, "dim": DIM, "n_layers": N_LAYERS, "n_heads": HEADS,
                   "n_kv_heads": KV_HEADS, "in_channels": IN_CH, "axes_dims": [4, 4, 4], "axes_lens": AXES_LENS,
                   "clip_text_dim": CLIP_DIM, "clip_img_dim": CLIP_DIM,
                   "_class_name": "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP"}, f, indent=2)
    comfy = {}
    for k, v in oa.items():
        h = v.to(torch.float16)
        assert torch.equal(h.float(), v), f"{k} is not fp16-exact"
        comfy["model.diffusion_model." + k] = h
    save_file(comfy, os.path.join(OUT, "comfy_a_fp16.safetensors"))
    save_file(diffusers_state(b), os.path.join(OUT, "diffusers", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(OUT, "diffusers", "config.json"), "w") as f:
        cfg = dict(b.config)
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}
        cfg["pooled_projection_dim"] = CLIP_DIM
        cfg["_class_name"] = "Lumina2Transformer2DModel"
        json.dump(cfg, f, indent=2)

    # --- inputs ---
    g = generator("dit.inputs")
    x = torch.randn(2, IN_CH, 16, 24, generator=g)
    t = torch.tensor([0.3, 0.7])
    cap = torch.randn(2, 9, CAP_DIM, generator=g)           # padded positions of sample 1 are garbage, not zeros
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], dtype=torch.int32)
    clip = torch.randn(2, CLIP_DIM, generator=g)

    ref = FixtureFile(os.path.join(OUT, "reference.safetensors"), "tools/reference/make_dit_fixtures.py", PINS)
    ref.add_case("inputs", {"x": x, "t": t, "cap": cap, "mask": mask, "clip": clip})
    for name, model, dt in [("a.fwd.f32", a, torch.float32), ("a.fwd.bf16", a, torch.bfloat16),
                            ("a.fwd.f16", a, torch.float16), ("b.fwd.f32", b, torch.float32)]:
        out = forward(model, x, t, cap, mask, clip, dt)
        assert torch.isfinite(out).all()
        ref.add_case(name, {"out": out}, dtype=str(dt).split(".")[1])
    # sanity: the padded garbage must not matter
    cap2 = cap.clone(); cap2[1, 5:] = 0
    assert torch.equal(forward(a, x, t, cap, mask, clip, torch.float32), forward(a, x, t, cap2, mask, clip, torch.float32))

    xc = torch.cat([x[:1], x[:1]], 0)
    for name, tv, scale, trunc, renorm, dt, expect in [
        ("a.cfg_renorm.f32", 0.2, 4.0, 0.25, 1.0, torch.float32, (True, True)),
        ("a.cfg_renorm.bf16", 0.2, 4.0, 0.25, 1.0, torch.bfloat16, (True, True)),
        ("a.cfg_trunc.f32", 0.6, 4.0, 0.25, 1.0, torch.float32, (False, False)),
        ("a.cfg_trunc.bf16", 0.6, 4.0, 0.25, 1.0, torch.bfloat16, (False, False)),
        ("a.cfg_plain.f32", 0.2, 2.5, 100.0, 0.0, torch.float32, (True, False)),
    ]:
        tc = torch.tensor([tv, tv])
        out, info = forward_with_cfg(a, xc, tc, cap, mask, clip, scale, trunc, renorm, dt)
        assert (info["cfg_used"], info["renorm_applied"]) == expect, (name, info)
        ref.add_case(name, {"out": out}, t=tv, scale=scale, trunc=trunc, renorm=renorm, dtype=str(dt).split(".")[1])
    ref.save()
    for root, _, files in os.walk(OUT):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
