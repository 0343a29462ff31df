#!/usr/bin/env python3
"""Trains NewBie-mini's VAE and DiT on the synthetic scenes of tools/mini/scene.py, in one run.

  python3 tools/mini/train.py --text DIR --newbie BIN --out DIR [--images N] [--vae-seconds S]
                              [--dit-seconds S] [--device cuda] [--seed 0]

--text DIR holds the frozen text encoders in the official layout (text_encoder/, clip_model/:
`newbie make-tiny-model DIR --gemma-tokenizer ... --jina-tokenizer ...` with the tokenizers of
tools/mini/make_tokenizers.py). Their features are computed by the engine itself (`BIN
encode-text`), so training sees exactly what generation will feed the DiT.

Steps (each logged with its loss curve to OUT/train_log.json):
 1. N scenes, rendered at 128x128; each has an XML caption and a flat-tag caption (the same
    content, shuffled, no binding).
 2. Text features: Gemma 3 (system prompt `xml` for XML captions, `text` for tags, as `auto`
    picks them at generation) and Jina CLIP v2 pooled vectors; the empty caption for the
    unconditional branch.
 3. VAE: diffusers AutoencoderKL with FLUX's structure (4 levels, 16 latent channels, attention in
    the middle block), L1 + MSE reconstruction and a small KL term. Latent statistics give the
    config's shift_factor (mean) and scaling_factor (1 / std).
 4. DiT: diffusers Lumina2Transformer2DModel with NewBie's CLIP pathway (the NextDiT_CLIP of the
    official code), flow matching in the official convention (t = 0 noise, t = 1 data, the model
    predicts data - noise), t drawn half uniform and half through the sampling shift 6, captions
    70% XML / 30% tags, 10% dropped to the empty caption so guidance works; EMA weights are kept.
 5. A check with the EMA DiT: sampled scenes read back by colour (scene.read_scene_colours).
Writes OUT/vae (diffusers folder), OUT/transformer_diffusers.safetensors + config, the log and a
sample grid. tools/mini/export.py turns that into the model folder in the official layout.

Runs on the GPU machine (PyTorch 2.11 there, diffusers 0.42.1 carried as a wheel); small settings
run on a CPU for a smoke test.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.numpy import load_file as load_np  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from diffusers import AutoencoderKL, Lumina2Transformer2DModel  # noqa: E402
from diffusers.models.normalization import RMSNorm  # noqa: E402

import scene as S  # noqa: E402

# the DiT of NewBie-mini (NextDiT_CLIP at small size)
DIT = dict(dim=256, layers=6, refiners=1, heads=4, kv_heads=2, ffn_multiplier=0.5, multiple_of=256,
           axes=(16, 24, 24), axes_lens=(1024, 512, 512), cap_dim=32, clip_dim=64, norm_eps=1e-5)
VAE = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=16, latent_channels=16)
SHIFT = 6.0


class TimeCaptionEmbedWithCLIP(nn.Module):
    """NextDiT_CLIP's conditioning around diffusers' time/caption embedder: the pooled Jina vector
    through RMSNorm + Linear, concatenated with the timestep embedding, SiLU, Linear -> adaLN input.
    Module names as the engine's diffusers naming expects (time_caption_embed.inner.* are
    diffusers' own; clip_text_pooled_proj.*, time_text_embed.* are NewBie's)."""

    def __init__(self, inner, clip_dim, adaln_dim, eps):
        super().__init__()
        self.inner = inner
        self.clip_text_pooled_proj = nn.Sequential(RMSNorm(clip_dim, eps=eps), nn.Linear(clip_dim, clip_dim))
        self.time_text_embed = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim + clip_dim, adaln_dim))
        self.clip_text_pooled = None

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        t_emb, cap = self.inner(hidden_states, timestep, encoder_hidden_states)
        clip = self.clip_text_pooled_proj(self.clip_text_pooled)
        return self.time_text_embed(torch.cat([t_emb, clip.to(t_emb.dtype)], -1)), cap


def build_dit():
    d = DIT
    m = Lumina2Transformer2DModel(
        patch_size=2, in_channels=16, hidden_size=d["dim"], num_layers=d["layers"], num_refiner_layers=d["refiners"],
        num_attention_heads=d["heads"], num_kv_heads=d["kv_heads"], multiple_of=d["multiple_of"],
        ffn_dim_multiplier=d["ffn_multiplier"], norm_eps=d["norm_eps"], axes_dim_rope=d["axes"],
        axes_lens=d["axes_lens"], cap_feat_dim=d["cap_dim"])
    m.time_caption_embed = TimeCaptionEmbedWithCLIP(m.time_caption_embed, d["clip_dim"], min(d["dim"], 1024), d["norm_eps"])
    return m


def dit_velocity(m, x, t, cap, mask, clip):
    m.time_caption_embed.clip_text_pooled = clip
    return m(hidden_states=x, timestep=t, encoder_hidden_states=cap, encoder_attention_mask=mask, return_dict=False)[0]


def shift(u, s=SHIFT):
    return u / (u + s - s * u)


class Log:
    def __init__(self, path):
        self.path, self.data, self.t0 = path, {}, time.time()

    def __call__(self, key, **values):
        values["elapsed_s"] = round(time.time() - self.t0, 2)
        self.data.setdefault(key, []).append(values)
        print(key, json.dumps(values), flush=True)

    def save(self):
        with open(self.path, "w") as f:
            json.dump(self.data, f, indent=1)


# ---------------------------------------------------------------------------------------------
# 1-2: scenes and their text features


def _scene_block(args):
    seed, block, n = args
    rng = np.random.default_rng([seed, block])
    out = []
    for _ in range(n):
        sc = S.random_scene(rng)
        out.append((sc, S.render(sc, rng), S.xml_caption(sc), S.tag_caption(sc, rng)))
    return out


def make_scenes(n, seed, block=500):
    """n scenes in blocks of 500, each block seeded by (seed, block index), drawn in parallel."""
    import multiprocessing as mp
    jobs = [(seed, b, min(block, n - b * block)) for b in range((n + block - 1) // block)]
    with mp.Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        rows = [r for part in pool.map(_scene_block, jobs) for r in part]
    return [r[0] for r in rows], np.stack([r[1] for r in rows]), [r[2] for r in rows], [r[3] for r in rows]


TEXT_DEVICE = ["--device", "cpu"]


def encode_texts(newbie, text_dir, texts, system, work, chunk=10000):
    """Gemma features (per caption: [L_i, 32], real tokens only) and Jina pooled [N, 64]."""
    gemma, jina = [], []
    for c0 in range(0, len(texts), chunk):
        part = texts[c0:c0 + chunk]
        prompts = os.path.join(work, "prompts.txt")
        with open(prompts, "w", encoding="utf-8") as f:
            f.write("\n".join(part) + "\n")
        out = os.path.join(work, "features.safetensors")
        cmd = [newbie, "encode-text", "--gemma", os.path.join(text_dir, "text_encoder"), "--jina",
               os.path.join(text_dir, "clip_model"), "--system-prompt", system, "--precision", "fp32"] + TEXT_DEVICE + [
               "--prompt-file", prompts, "-o", out]
        if not part[0]:
            cmd = cmd[:cmd.index("--prompt-file")] + ["--prompt", ""] + ["-o", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        f = load_np(out)
        lengths = f["gemma_mask"].sum(1).astype(int)
        for i, n in enumerate(lengths):
            gemma.append(torch.from_numpy(f["gemma_hidden"][i, :n].copy()).half())
        jina.append(torch.from_numpy(f["jina_pooled"].copy()))
    return gemma, torch.cat(jina)


def pack(features, device, lmax=None):
    """Variable-length features -> padded [N, Lmax, D] fp16 and lengths."""
    lmax = lmax or max(x.shape[0] for x in features)
    out = torch.zeros(len(features), lmax, features[0].shape[1], dtype=torch.float16)
    for i, x in enumerate(features):
        out[i, :x.shape[0]] = x
    return out.to(device), torch.tensor([x.shape[0] for x in features], device=device)


# ---------------------------------------------------------------------------------------------
# 3: VAE


def train_vae(images, device, seconds, log, batch=64, lr=3e-4):
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=VAE["latent_channels"],
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=VAE["block_out_channels"], layers_per_block=VAE["layers_per_block"],
                        norm_num_groups=VAE["norm_num_groups"], act_fn="silu", use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=True).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator(device="cpu").manual_seed(1)
    step, t0 = 0, time.time()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    while time.time() - t0 < seconds:
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = images[idx.to(images.device)].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        with autocast:
            post = vae.encode(x).latent_dist
            z = post.sample()
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / (x.shape[1] * x.shape[2] * x.shape[3])
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log("vae", step=step, loss=round(float(loss), 5), kl=round(float(kl), 4))
        step += 1
    vae.eval()
    return vae


@torch.no_grad()
def encode_latents(vae, images, device, batch=256):
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(vae.encode(x).latent_dist.mean.float())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# 4: DiT


def train_dit(latents, gemma_xml, len_xml, gemma_tags, len_tags, jina_xml, jina_tags, empty, device, seconds, log,
              batch=128, lr=3e-4, ema_decay=0.999):
    m = build_dit().to(device)
    ema = build_dit().to(device)
    ema.load_state_dict(m.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    n = latents.shape[0]
    g = torch.Generator(device="cpu").manual_seed(2)
    empty_cap, empty_clip = empty
    step, t0 = 0, time.time()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    while time.time() - t0 < seconds:
        idx = torch.randint(0, n, (batch,), generator=g).to(device)
        use_xml = (torch.rand(batch, generator=g) < 0.7).to(device)
        drop = (torch.rand(batch, generator=g) < 0.1).to(device)
        lx, lt = len_xml[idx], len_tags[idx]
        lens = torch.where(drop, torch.ones_like(lx), torch.where(use_xml, lx, lt))
        L = int(lens.max())
        cap = torch.where(use_xml[:, None, None], gemma_xml[idx, :L], gemma_tags[idx, :L]).float()
        cap = torch.where(drop[:, None, None], F.pad(empty_cap[None], (0, 0, 0, L - 1)).expand(batch, L, -1), cap)
        mask = torch.arange(L, device=device)[None] < lens[:, None]
        cap = cap * mask[..., None]
        clip = torch.where(drop[:, None], empty_clip[None].expand(batch, -1), torch.where(use_xml[:, None], jina_xml[idx], jina_tags[idx]))
        x1 = latents[idx]
        x0 = torch.randn(x1.shape, generator=g).to(device)
        u = torch.rand(batch, generator=g).to(device)
        t = torch.where(torch.rand(batch, generator=g).to(device) < 0.5, u, shift(u))
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        with autocast:
            v = dit_velocity(m, xt, t, cap, mask, clip)
        loss = F.mse_loss(v.float(), x1 - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 500)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), m.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        if step % 200 == 0:
            log("dit", step=step, loss=round(float(loss), 5))
        step += 1
    log("dit", step=step, loss=round(float(loss), 5))
    ema.eval()
    return ema


@torch.no_grad()
def sample(m, vae_decode, cap, lens, clip, empty, device, steps=18, cfg=5.0, seed=0):
    """Euler on the official shifted grid with CFG on every step (the check of step 5)."""
    b = cap.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(b, 16, S.SIZE // 8, S.SIZE // 8, generator=g).to(device)
    L = cap.shape[1]
    ecap = F.pad(empty[0][None], (0, 0, 0, L - 1)).expand(b, L, -1)
    caps = torch.cat([cap, ecap]).float()
    pos = torch.arange(L, device=device)[None].expand(b, L)
    mask = torch.cat([pos < lens[:, None], pos < 1])
    clips = torch.cat([clip, empty[1][None].expand(b, -1)])
    grid = shift(torch.linspace(0, 1, steps, device=device))
    for i in range(steps - 1):
        t = grid[i].expand(2 * b)
        v = dit_velocity(m, torch.cat([x, x]), t, caps, mask, clips).float()
        v = v[b:] + cfg * (v[:b] - v[b:])
        x = x + (grid[i + 1] - grid[i]) * v
    return vae_decode(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--newbie", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--vae-seconds", type=float, default=150)
    ap.add_argument("--dit-seconds", type=float, default=330)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--dit-batch", type=int, default=128)
    ap.add_argument("--work", help="scratch folder for the text features (default OUT/work)")
    ap.add_argument("--text-device", default="cpu", help="where the engine runs the text encoders (fp32 either way)")
    ap.add_argument("--check-scenes", type=int, default=96, help="held-out scenes sampled in the final check")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    log = Log(os.path.join(a.out, "train_log.json"))
    TEXT_DEVICE[1] = a.text_device
    log("setup", torch=torch.__version__, device=str(device), images=a.images, dit=json.dumps(DIT), vae=json.dumps(VAE))

    scenes, images, xml, tags = make_scenes(a.images, a.seed)
    log("scenes", count=len(scenes))
    work = a.work or os.path.join(a.out, "work")
    os.makedirs(work, exist_ok=True)
    g_xml, j_xml = encode_texts(a.newbie, a.text, xml, "xml", work)
    g_tags, j_tags = encode_texts(a.newbie, a.text, tags, "text", work)
    g_empty, j_empty = encode_texts(a.newbie, a.text, [""], "none", work)
    lmax = max(x.shape[0] for x in g_xml + g_tags)
    gemma_xml, len_xml = pack(g_xml, device, lmax)
    gemma_tags, len_tags = pack(g_tags, device, lmax)
    empty = (g_empty[0].float().to(device), j_empty[0].to(device))
    jina_xml, jina_tags = j_xml.to(device), j_tags.to(device)
    log("text", xml_tokens_max=int(len_xml.max()), tags_tokens_max=int(len_tags.max()), empty_tokens=int(g_empty[0].shape[0]))

    images_t = torch.from_numpy(images).to(device)
    vae = train_vae(images_t, device, a.vae_seconds, log, batch=a.vae_batch)
    raw = encode_latents(vae, images_t, device)
    shift_factor, scaling_factor = float(raw.mean()), float(1 / raw.std())
    vae.register_to_config(shift_factor=round(shift_factor, 4), scaling_factor=round(scaling_factor, 4))
    shift_factor, scaling_factor = vae.config.shift_factor, vae.config.scaling_factor
    latents = (raw - shift_factor) * scaling_factor
    with torch.no_grad():
        x = images_t[:256].permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = vae.decode(raw[:256]).sample
        psnr = float(10 * torch.log10(4 / F.mse_loss(rec.clamp(-1, 1), x)))
    log("vae_result", psnr_db=round(psnr, 2), shift_factor=shift_factor, scaling_factor=scaling_factor)
    vae.save_pretrained(os.path.join(a.out, "vae"))

    dit = train_dit(latents, gemma_xml, len_xml, gemma_tags, len_tags, jina_xml, jina_tags, empty, device,
                    a.dit_seconds, log, batch=a.dit_batch)
    save_file({k: v.detach().to(torch.bfloat16).contiguous().cpu() for k, v in dit.state_dict().items()},
              os.path.join(a.out, "transformer_diffusers.safetensors"))
    with open(os.path.join(a.out, "transformer_config.json"), "w") as f:
        json.dump(DIT, f)

    # 5: read back what the EMA DiT draws for held-out scenes, XML and flat tags
    rng = np.random.default_rng(10_000 + a.seed)
    held = [S.random_scene(rng, n=1 + i % 3) for i in range(a.check_scenes)]
    def decode(z):
        with torch.no_grad():
            img = vae.decode(z / scaling_factor + shift_factor).sample
        return ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    results = {}
    for form, texts, system in (("xml", [S.xml_caption(s) for s in held], "xml"),
                                ("tags", [S.tag_caption(s, rng) for s in held], "text")):
        gf, jf = encode_texts(a.newbie, a.text, texts, system, work)
        cap, lens = pack(gf, device)
        imgs = sample(dit, decode, cap.float(), lens, jf.to(device), empty, device)
        ok = {1: [0, 0], 2: [0, 0], 3: [0, 0]}
        for sc, im in zip(held, imgs):
            n = len(sc["characters"])
            for c in sc["characters"]:
                h, cl = S.read_scene_colours(im, c["position"])
                ok[n][0] += (h == c["hair"]) + (cl == c["clothing"])
                ok[n][1] += 2
        results[form] = {f"{k}_characters": round(v[0] / v[1], 3) for k, v in ok.items() if v[1]}
        if form == "xml":
            from PIL import Image
            rows = max(1, len(imgs) // 8)
            grid = np.concatenate([np.concatenate(list(imgs[r * 8:(r + 1) * 8]), 1) for r in range(rows)], 0)
            Image.fromarray(grid).save(os.path.join(a.out, "samples_xml.png"))
    log("check", **{f"{f}_{k}": v for f, r in results.items() for k, v in r.items()})
    log.save()


if __name__ == "__main__":
    main()
