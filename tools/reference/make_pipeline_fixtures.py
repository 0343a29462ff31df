"""Reference for the end-to-end pipeline (issue 6) on the tiny random model.

The tiny model is the one `newbie make-tiny-model DIR` writes (seed 0; the Swift test writes the
same files again), read here with the published Python implementations:
  - Gemma 3: transformers Gemma3TextModel, hidden_states[-2], on `system prompt + prompt`
    (no system prompt for the empty negative prompt: `<bos>` alone), spec 3.5;
  - Jina CLIP v2 text tower: transformers JinaEmbeddingsV3Model with the retrieval.query LoRA merged
    (make_jina_fixtures.hf_model / merged), mean pooled over non-pad tokens, on the raw prompt;
  - DiT: diffusers Lumina2Transformer2DModel plus NewBie's CLIP pathway (make_dit_fixtures), the
    official forward_with_cfg (scale, truncation, renorm);
  - sampling: torchdiffeq odeint on the official shifted grid (euler, midpoint), noise
    torch.manual_seed(seed); torch.randn([1, 16, H/8, W/8]) on the CPU;
  - VAE: diffusers AutoencoderKL, x / 0.3611 + 0.1159, (img + 1) / 2 clamped.
All in float32. Writes Tests/Fixtures/pipeline/reference.safetensors.

Run (pinned versions as the other scripts; torchdiffeq 0.2.5):
  swift run newbie make-tiny-model /tmp/newbie-tiny
  /work/venv/bin/python tools/reference/make_pipeline_fixtures.py /tmp/newbie-tiny
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torchdiffeq  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import Gemma3TextConfig, Gemma3TextModel  # noqa: E402
from diffusers import AutoencoderKL, Lumina2Transformer2DModel  # noqa: E402

import make_jina_fixtures as J  # noqa: E402  (pinned-version check at import)
import make_dit_fixtures as D  # noqa: E402

assert torchdiffeq.__version__ == "0.2.5", torchdiffeq.__version__
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "pipeline")

SYSTEM_TEXT = ("You are an assistant designed to generate high-quality anime images with the highest degree of "
               "image-text alignment based on textual prompts. <Prompt Start> ")
PROMPT = "1girl, red eyes, smile"
W, H, SEED = 32, 48, 5
# (name, method, grid points, cfg scale, cfg_trunc, renorm)
CASES = [("euler_trunc", "euler", 5, 4.0, 0.25, 0.0), ("midpoint_renorm", "midpoint", 4, 5.0, 100.0, 1.0),
         ("midpoint_both", "midpoint", 5, 4.5, 0.5, 1.0)]


def gemma(model_dir, texts):
    cfg = json.load(open(os.path.join(model_dir, "text_encoder", "config.json")))["text_config"]
    cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    m = Gemma3TextModel(Gemma3TextConfig(**cfg)).eval()
    sd = load_file(os.path.join(model_dir, "text_encoder", "model.safetensors"))
    sd = {k[len("language_model.model."):]: v for k, v in sd.items()}
    missing, unexpected = m.load_state_dict(sd, strict=True), None
    tok = Tokenizer.from_file(os.path.join(model_dir, "text_encoder", "tokenizer.json"))
    outs = []
    for t in texts:
        ids = tok.encode(t).ids              # <bos> + text (post-processor)
        x = torch.tensor([ids])
        with torch.no_grad():
            hs = m(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states
        outs.append((torch.tensor(ids, dtype=torch.int32), hs[-2][0].float()))
    return outs


def jina(model_dir, texts):
    sd = load_file(os.path.join(model_dir, "clip_model", "model.safetensors"))
    p = J.PREFIX
    vocab, hidden = sd[p + "embeddings.word_embeddings.parametrizations.weight.original"].shape
    layers = len({k.split(".")[5] for k in sd if k.startswith(p + "encoder.layers.")})
    inter = sd[p + "encoder.layers.0.mlp.fc1.parametrizations.weight.original"].shape[0]
    cfg = dict(hidden=hidden, layers=layers, heads=hidden // 64, intermediate=inter, rank=4, alpha=4.0, adaptations=1,
               type_vocab=1)
    model = J.hf_model(vocab, cfg, J.merged(sd, cfg, torch.float32), torch.float32)
    tok = Tokenizer.from_file(os.path.join(model_dir, "clip_model", "tokenizer.json"))
    outs = []
    for t in texts:
        ids = tok.encode(t).ids              # <s> text </s>
        outs.append((torch.tensor(ids, dtype=torch.int32), J.pooled_reference(model, torch.tensor([ids]))[0].float()))
    return outs


def diffusers_state(o, n_heads, n_kv, dim):
    """Official NextDiT names -> the reference model's names (inverse of make_dit_fixtures.official_state)."""
    hd = dim // n_heads
    simple = {v: k for k, v in {
        "time_caption_embed.inner.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
        "time_caption_embed.inner.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
        "time_caption_embed.inner.caption_embedder.": "cap_embedder.",
        "time_caption_embed.clip_text_pooled_proj.": "clip_text_pooled_proj.",
        "time_caption_embed.time_text_embed.": "time_text_embed.",
        "norm_out.linear_1.": "final_layer.adaLN_modulation.1.",
        "norm_out.linear_2.": "final_layer.linear.",
        "x_embedder.": "x_embedder.",
    }.items()}
    ren = {
        "attention.out.weight": "attn.to_out.0.weight", "attention.q_norm.weight": "attn.norm_q.weight",
        "attention.k_norm.weight": "attn.norm_k.weight", "feed_forward.w1.weight": "feed_forward.linear_1.weight",
        "feed_forward.w2.weight": "feed_forward.linear_2.weight", "feed_forward.w3.weight": "feed_forward.linear_3.weight",
        "attention_norm2.weight": "norm2.weight", "ffn_norm1.weight": "ffn_norm1.weight", "ffn_norm2.weight": "ffn_norm2.weight",
        "adaLN_modulation.1.weight": "norm1.linear.weight", "adaLN_modulation.1.bias": "norm1.linear.bias",
    }
    d = {}
    for k, v in o.items():
        hit = [a for a in simple if k.startswith(a)]
        if hit:
            d[simple[hit[0]] + k[len(hit[0]):]] = v
            continue
        parts = k.split(".")
        block, rest = ".".join(parts[:2]), ".".join(parts[2:])
        if rest == "attention.qkv.weight":
            q, kk, vv = torch.split(v, [n_heads * hd, n_kv * hd, n_kv * hd], 0)
            d[block + ".attn.to_q.weight"], d[block + ".attn.to_k.weight"], d[block + ".attn.to_v.weight"] = q, kk, vv
        elif rest == "attention_norm1.weight":
            d[block + (".norm1.weight" if parts[0] == "context_refiner" else ".norm1.norm.weight")] = v
        else:
            d[block + "." + ren[rest]] = v
    return d


def dit(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "transformer", "config.json")))
    dim, heads, kv = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    sd = load_file(os.path.join(model_dir, "transformer", "diffusion_pytorch_model.safetensors"))
    ffn = sd["layers.0.feed_forward.w1.weight"].shape[0]
    m = Lumina2Transformer2DModel(
        patch_size=2, in_channels=cfg["in_channels"], hidden_size=dim, num_layers=cfg["n_layers"],
        num_refiner_layers=cfg["n_refiner_layers"], num_attention_heads=heads, num_kv_heads=kv, multiple_of=ffn,
        ffn_dim_multiplier=(ffn - 1) / (4 * dim), norm_eps=1e-5, axes_dim_rope=tuple(cfg["axes_dims"]),
        axes_lens=tuple(cfg["axes_lens"]), cap_feat_dim=cfg["cap_feat_dim"])
    m.time_caption_embed = D.NewBieTimeCaptionEmbed(m.time_caption_embed, cfg["clip_text_dim"], min(dim, 1024))
    m.load_state_dict(diffusers_state(sd, heads, kv, dim), strict=True)
    assert m.layers[0].feed_forward.linear_1.weight.shape[0] == ffn
    return m.eval()


def main():
    model_dir = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    out = {}
    (gc_ids, gc), (gu_ids, gu) = gemma(model_dir, [SYSTEM_TEXT + PROMPT, ""])
    (jc_ids, jc), (ju_ids, ju) = jina(model_dir, [PROMPT, ""])
    assert gu_ids.tolist() == [2], gu_ids
    out.update({"gemma_ids": gc_ids, "gemma_cond": gc, "gemma_uncond": gu, "jina_ids": jc_ids, "jina_cond": jc,
                "jina_uncond": ju})
    m = dit(model_dir)
    vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae")).eval()
    torch.manual_seed(SEED)
    noise = torch.randn([1, 16, H // 8, W // 8])
    out["noise"] = noise
    L = max(gc.shape[0], gu.shape[0])
    cap = torch.zeros(2, L, gc.shape[1])
    cap[0, :gc.shape[0]], cap[1, :gu.shape[0]] = gc, gu
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, :gc.shape[0]], mask[1, :gu.shape[0]] = True, True
    clip = torch.stack([jc, ju])
    cases = []
    for name, method, points, scale, trunc, renorm in CASES:
        u = torch.linspace(0, 1, points)
        grid = u / (u + 6.0 - 6.0 * u)
        applied = []

        def f(t, x):
            tt = t.reshape(1).repeat(2)
            with torch.no_grad():
                v, info = D.forward_with_cfg(m, torch.cat([x, x]), tt, cap, mask, clip, scale, trunc, renorm, torch.float32)
            applied.append(info["renorm_applied"])
            return v[:1]
        with torch.no_grad():
            xs = torchdiffeq.odeint(f, noise, grid, method=method)
        latent = xs[-1]
        with torch.no_grad():
            img = vae.decode(latent / 0.3611 + 0.1159).sample
        out[name + "/latent"] = latent.contiguous()
        out[name + "/image"] = ((img + 1) / 2).clamp(0, 1).contiguous()
        cases.append(dict(name=name, sampler=method, steps=points, cfg=scale, cfg_trunc=trunc, renorm=renorm,
                          renorm_applied=sum(applied), evaluations=len(applied)))
        print(name, "evaluations", len(applied), "renorm applied", sum(applied), "latent std", float(latent.std()))
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "reference.safetensors"),
              metadata={"cases": json.dumps(cases), "prompt": PROMPT, "system_prompt": SYSTEM_TEXT,
                        "width": str(W), "height": str(H), "seed": str(SEED), "tiny_model_seed": "0",
                        "generator": "tools/reference/make_pipeline_fixtures.py"})
    print("wrote", os.path.join(OUT, "reference.safetensors"))


if __name__ == "__main__":
    main()
