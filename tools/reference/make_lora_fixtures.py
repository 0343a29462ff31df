#!/usr/bin/env python3
"""Reference fixtures for LoRA and LoKr adapters on the NextDiT (issue 16, items 1-3).

The adapters are made by the libraries people train NewBie adapters with, applied to the tiny
official-naming DiT of the DiT fixtures (model A of make_dit_fixtures.py, Tests/Fixtures/dit/official):
  - PyPI `peft` (LoraConfig + get_peft_model + save_pretrained), as the official NewBie trainer
    (NewBieAI-Lab/NewbieLoraTrainer, train_newbie_lora.py) does: target modules by suffix
    ("attention.qkv", "attention.out", "feed_forward.w2", "time_text_embed.1", "clip_text_pooled_proj.1"
    are its defaults), `save_pretrained` writes adapter_model.safetensors with keys
    base_model.model.<module>.lora_A.weight / lora_B.weight and adapter_config.json (r, lora_alpha)
    beside it;
  - PyPI `lycoris-lora` (LycorisNetwork with the trainer's preset: target_name fnmatch patterns
    "*attention.qkv", ..., network_module "lokr", factor), `save_weights` with the trainer's metadata
    (adapter_type, lora_rank, lora_alpha): keys lycoris_<module_with_underscores>.lokr_w1 / lokr_w2
    (or lokr_w1_a/_b, lokr_w2_a/_b when decomposed) and .alpha.
The DiT's linear layers are stood in for by a module tree with the official names (every 2-D
".weight" of the checkpoint becomes an nn.Linear at its path), loaded with model A's weights.
The factors are drawn at random (seeded) after the libraries created them (PEFT and LyCORIS start
one factor at zero).

Pinned versions (asserted at start):
    torch 2.15.0, peft 0.21.2, lycoris-lora 4.1.3 (its distribution version), diffusers 0.42.1,
    safetensors 0.8.0, numpy 2.4.6

Regenerate (from the repository root; CPU only, a few seconds):
    /work/venv/bin/python tools/reference/make_lora_fixtures.py
(any venv with `pip install torch==2.15.0 peft==0.21.2 lycoris-lora==4.1.3 diffusers==0.42.1
safetensors==0.8.0 numpy==2.4.6`).

Writes Tests/Fixtures/lora/:
  peft/adapter_model.safetensors + peft/adapter_config.json
        PEFT save_pretrained output: r 4, lora_alpha 2 (scale 0.5), targets the trainer's defaults
        plus feed_forward.w1 / w3 (every block: layers, noise and context refiners).
  peft_noconfig/adapter_model.safetensors
        the same tensors without adapter_config.json (the loader must say which alpha it used).
  kohya.safetensors
        kohya / ComfyUI layout: lora_unet_<module_with_underscores>.lora_down.weight / lora_up.weight
        and .alpha (r 2, alpha 3: scale 1.5) on attention.out, adaLN_modulation.1, x_embedder,
        t_embedder.mlp.0, cap_embedder.1, final_layer.linear, final_layer.adaLN_modulation.1
        (made with PEFT, renamed).
  comfy_noalpha.safetensors
        diffusion_model.<module>.lora_up.weight / lora_down.weight with no alpha (r 3: ComfyUI's
        scale 1 = PEFT with lora_alpha = r) on feed_forward.w1 / w2 / w3.
  (LoKr "merged" references use the LoKr module's own forward, W + get_weight: lycoris-lora 4.1.3's
  merge_to / get_merged_weight applies alpha / rank twice when it is not 1 - checked and noted here,
  not followed; ComfyUI applies it once, as the training forward does.)
  lokr_full.safetensors
        LyCORIS LoKr as the trainer's lokr.toml makes it (rank 114514 = full factors lokr_w1 /
        lokr_w2, scale 1; factor 4), trainer metadata.
  lokr_lowrank.safetensors
        LyCORIS LoKr with decomposed factors (rank 2, alpha 3, decompose_both, factor 8):
        lokr_w1_a/_b and lokr_w2_a/_b where the factor sizes allow, scale 1.5.
  reference.safetensors  cases (tools/reference/common.py FixtureFile layout):
      <adapter>.merged      role <module>.y: the unmerged case's inputs through the layer with the
                            weight from the library's merge (PEFT merge_and_unload / LyCORIS
                            merge_to), strength 1
      <adapter>.unmerged    roles <module>.x / <module>.y: an input [3, in] and the library's
                            unmerged forward of that layer (PEFT LoRA layer forward, LyCORIS
                            bypass_forward)
      combined.merged       peft at strength 0.7 and lokr_lowrank at 1.3 on the same model
                            (PEFT set_scale then merge_and_unload, then the LoKr forward at
                            multiplier 1.3)
      combined.unmerged     the same through both libraries' unmerged forwards
      dit.<adapter>         the DiT forward (diffusers Lumina2 + CLIP pathway, fp32, inputs of the
                            DiT fixtures) with the merged weights: out [2,16,16,24]
      dit.diffusers_peft    PEFT applied to diffusers' Lumina2 model A itself (to_q / to_k / to_v,
                            to_out.0, feed_forward.linear_2, norm1.linear; r 4, alpha 4): "out" after
                            merge_and_unload, "unmerged" through PEFT's LoRA layers
  diffusers_peft/adapter_model.safetensors + adapter_config.json
        that adapter as PEFT saves it (keys base_model.model.layers.N.attn.to_q.lora_A.weight, ...)
  diffusers_transformer.safetensors
        the same factors as a diffusers pipeline names them (transformer.<name>.lora_A.weight), no
        alpha (scale 1 = its alpha / rank)
"""
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import FixtureFile, check_versions, generator, write_safetensors  # noqa: E402

PINS = {"torch": "2.15.0", "peft": "0.21.2", "diffusers": "0.42.1", "safetensors": "0.8.0", "numpy": "2.4.6"}
check_versions(PINS)
# lycoris has no __version__: its distribution's version
import importlib.metadata  # noqa: E402
if importlib.metadata.version("lycoris-lora") != "4.1.3":
    sys.exit(f"reference fixtures need lycoris-lora 4.1.3; found {importlib.metadata.version('lycoris-lora')}")
PINS["lycoris-lora"] = "4.1.3"

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from lycoris.wrapper import LycorisNetwork  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import make_dit_fixtures as dit  # noqa: E402  (same pins; builds model A and runs diffusers)

torch.set_grad_enabled(False)
torch.set_num_threads(1)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "lora")
DIT = os.path.join(ROOT, "Tests", "Fixtures", "dit")

TRAINER_TARGETS = ["attention.qkv", "attention.out", "feed_forward.w2", "time_text_embed.1", "clip_text_pooled_proj.1"]


def base_state():
    """Model A's official-naming weights, fp32 (bf16-exact), checked against the committed file."""
    a = dit.bf16_exact(dit.build([4, 4, 4], seed=1))
    sd = dit.official_state(a)
    committed = load_file(os.path.join(DIT, "official", "model.safetensors"))
    for k, v in sd.items():
        assert torch.equal(committed[k].float(), v.float()), f"model A {k} differs from the committed fixture"
    return a, {k: v.float() for k, v in sd.items()}


class Tree(nn.Module):
    pass


def skeleton(sd):
    """nn.Linear at every official path with a 2-D weight (bias where the checkpoint has one)."""
    root = Tree()
    for k, v in sorted(sd.items()):
        if not k.endswith(".weight") or v.ndim != 2:
            continue
        path = k[: -len(".weight")]
        parts = path.split(".")
        m = root
        for p in parts[:-1]:
            if not hasattr(m, p):
                m.add_module(p, Tree())
            m = getattr(m, p)
        has_bias = (path + ".bias") in sd
        lin = nn.Linear(v.shape[1], v.shape[0], bias=has_bias)
        lin.weight.copy_(v)
        if has_bias:
            lin.bias.copy_(sd[path + ".bias"])
        m.add_module(parts[-1], lin)
    return root


def linear_paths(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def randomize(params, name, std=0.3):
    g = generator("lora." + name)
    for pname, p in sorted(params, key=lambda t: t[0]):
        fan = p.shape[-1] if p.ndim > 1 else 1
        p.copy_(torch.randn(p.shape, generator=g) * std / math.sqrt(fan) * 2)


def make_peft(sd, name, r, alpha, targets):
    model = skeleton(sd)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    pm = get_peft_model(model, cfg)
    randomize([(n, p) for n, p in pm.named_parameters() if "lora_" in n], name)
    pm.eval()
    return pm


def peft_modules(pm):
    """official module path -> the PEFT LoRA layer."""
    out = {}
    for n, m in pm.base_model.model.named_modules():
        if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), nn.Linear):
            out[n] = m
    return out


def unmerged_cases(mods, name, forward):
    """Input [3, in] and the library's unmerged layer output per module."""
    g = generator("lora.x." + name)
    t = {}
    for path in sorted(mods):
        lin = mods[path]
        fin = lin.in_features if hasattr(lin, "in_features") else lin.base_layer.in_features
        x = torch.randn(3, fin, generator=g)
        t[path + ".x"] = x
        t[path + ".y"] = forward(path, x)
    return t


def merged_weights(model, paths):
    sd = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return {p: sd[p] for p in paths}


def merged_case(merged, unmerged, sd):
    """The merged layers on the unmerged case's inputs: y = x W_merged^T + b (so that the fixture
    holds no weight matrices)."""
    t = {}
    for p, w in merged.items():
        x = unmerged[p + ".x"]
        t[p + ".y"] = torch.nn.functional.linear(x, w, sd.get(p + ".bias"))
    return t


def make_lokr(sd, name, rank, alpha, factor, decompose_both, multiplier=1.0, model=None):
    model = model if model is not None else skeleton(sd)
    LycorisNetwork.apply_preset({
        "enable_conv": True, "target_module": [], "target_name": ["*" + t for t in TRAINER_TARGETS],
        "use_fnmatch": True, "exclude_name": [],
    })
    net = LycorisNetwork(model, multiplier=multiplier, lora_dim=rank, conv_lora_dim=rank, alpha=alpha, conv_alpha=alpha,
                         dropout=0.0, rank_dropout=0.0, module_dropout=0.0, network_module="lokr", train_norm=False,
                         factor=factor, decompose_both=decompose_both)
    net.apply_to()
    randomize([(n, p) for n, p in net.named_parameters() if "lokr_" in n], name)
    net.eval()
    return model, net


def linear_of(model, path):
    m = dict(model.named_modules())[path]
    m = m.org_module[0] if hasattr(m, "org_module") else m
    return m.weight, m.bias


def lokr_merged(loras, multiplier):
    """W + multiplier * delta W, delta W = get_weight (LyCORIS: scale * kron(w1, w2), scale once)."""
    out = {}
    for p, l in loras.items():
        w = l.org_module[0].weight.detach()
        out[p] = w + l.get_weight(l.shape) * multiplier
    return out


def check_merge_to_double_scale(loras, merged):
    """Documents the lycoris-lora 4.1.3 merge path: get_merged_weight's delta is scale x ours."""
    for p, l in loras.items():
        w0 = l.org_module[0].weight.detach()
        w, _ = l.get_merged_weight(1.0, w0.shape, None)
        ratio = float((w - w0).norm() / (merged[p] - w0).norm())
        assert abs(ratio - float(l.scale)) < 1e-4, (p, ratio, l.scale)


def lokr_module_path(lora):
    return lora.lora_name[len("lycoris_"):]


def to_diffusers(model_a, merged):
    """Copies merged official-named linear weights into diffusers model A (a fresh copy)."""
    import copy
    m = copy.deepcopy(model_a)
    p = dict(m.named_parameters())
    hd, hq, hkv = dit.DIM // dit.HEADS, dit.HEADS, dit.KV_HEADS
    simple = {
        "x_embedder": "x_embedder",
        "t_embedder.mlp.0": "time_caption_embed.inner.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "time_caption_embed.inner.timestep_embedder.linear_2",
        "cap_embedder.1": "time_caption_embed.inner.caption_embedder.1",
        "clip_text_pooled_proj.1": "time_caption_embed.clip_text_pooled_proj.1",
        "time_text_embed.1": "time_caption_embed.time_text_embed.1",
        "final_layer.adaLN_modulation.1": "norm_out.linear_1",
        "final_layer.linear": "norm_out.linear_2",
    }
    block = {"attention.out": "attn.to_out.0", "feed_forward.w1": "feed_forward.linear_1",
             "feed_forward.w2": "feed_forward.linear_2", "feed_forward.w3": "feed_forward.linear_3",
             "adaLN_modulation.1": "norm1.linear"}
    for path, w in merged.items():
        if path in simple:
            p[simple[path] + ".weight"].copy_(w)
            continue
        parts = path.split(".")
        b, rest = ".".join(parts[:2]), ".".join(parts[2:])
        if rest == "attention.qkv":
            q, k, v = torch.split(w, [hq * hd, hkv * hd, hkv * hd], 0)
            p[b + ".attn.to_q.weight"].copy_(q)
            p[b + ".attn.to_k.weight"].copy_(k)
            p[b + ".attn.to_v.weight"].copy_(v)
        else:
            p[b + "." + block[rest] + ".weight"].copy_(w)
    return m


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    model_a, sd = base_state()
    ref = FixtureFile(os.path.join(OUT, "reference.safetensors"), "tools/reference/make_lora_fixtures.py", PINS)
    merged_all = {}

    # --- PEFT, as the official trainer saves it ---
    peft_targets = TRAINER_TARGETS + ["feed_forward.w1", "feed_forward.w3"]
    pm = make_peft(sd, "peft", r=4, alpha=2, targets=peft_targets)
    mods = peft_modules(pm)
    assert any(p.startswith("context_refiner.") for p in mods) and any(p.startswith("noise_refiner.") for p in mods)
    pdir = os.path.join(OUT, "peft")
    pm.save_pretrained(pdir)
    for extra in os.listdir(pdir):
        if extra not in ("adapter_model.safetensors", "adapter_config.json"):
            os.remove(os.path.join(pdir, extra))
    # keep adapter_config.json stable and small: the keys a loader reads, as PEFT wrote them
    with open(os.path.join(pdir, "adapter_config.json")) as f:
        cfg = json.load(f)
    keep = {k: cfg[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                                "use_rslora", "use_dora", "fan_in_fan_out", "bias", "lora_dropout") if k in cfg}
    keep["target_modules"] = sorted(keep["target_modules"])
    with open(os.path.join(pdir, "adapter_config.json"), "w") as f:
        json.dump(keep, f, indent=2, sort_keys=True)
    keys = sorted(safe_open(os.path.join(pdir, "adapter_model.safetensors"), "pt").keys())
    assert all(k.startswith("base_model.model.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys), keys[:4]
    os.makedirs(os.path.join(OUT, "peft_noconfig"))
    shutil.copy(os.path.join(pdir, "adapter_model.safetensors"), os.path.join(OUT, "peft_noconfig", "adapter_model.safetensors"))
    un = unmerged_cases(mods, "peft", lambda p, x: mods[p](x))
    ref.add_case("peft.unmerged", un, scale=0.5)
    # combined: PEFT at strength 0.7 (scale 0.7 * 2 / 4) ...
    pm_c = make_peft(sd, "peft", r=4, alpha=2, targets=peft_targets)
    for m in peft_modules(pm_c).values():
        m.set_scale("default", 0.7)
    merged_peft_c = pm_c.merge_and_unload()
    merged = merged_weights(pm.merge_and_unload(), sorted(mods))
    ref.add_case("peft.merged", merged_case(merged, un, sd))
    merged_all["peft"] = merged

    # --- kohya / ComfyUI layout (PEFT factors renamed) ---
    k_targets = ["attention.out", "adaLN_modulation.1", "x_embedder", "t_embedder.mlp.0", "cap_embedder.1", "final_layer.linear"]
    km = make_peft(sd, "kohya", r=2, alpha=3, targets=k_targets)
    kmods = peft_modules(km)
    assert "final_layer.adaLN_modulation.1" in kmods
    ktensors = {}
    for path, m in kmods.items():
        key = "lora_unet_" + path.replace(".", "_")
        ktensors[key + ".lora_down.weight"] = m.lora_A["default"].weight.detach().clone()
        ktensors[key + ".lora_up.weight"] = m.lora_B["default"].weight.detach().clone()
        ktensors[key + ".alpha"] = torch.tensor(3.0)
    write_safetensors(os.path.join(OUT, "kohya.safetensors"), ktensors, {"ss_network_dim": "2", "ss_network_alpha": "3"})
    un = unmerged_cases(kmods, "kohya", lambda p, x: kmods[p](x))
    ref.add_case("kohya.unmerged", un, scale=1.5)
    merged = merged_weights(km.merge_and_unload(), sorted(kmods))
    ref.add_case("kohya.merged", merged_case(merged, un, sd))
    merged_all["kohya"] = merged

    # --- ComfyUI diffusion_model. prefix, no alpha (scale 1 = PEFT lora_alpha = r) ---
    cm = make_peft(sd, "comfy", r=3, alpha=3, targets=["feed_forward.w1", "feed_forward.w2", "feed_forward.w3"])
    cmods = peft_modules(cm)
    ctensors = {}
    for path, m in cmods.items():
        ctensors["diffusion_model." + path + ".lora_down.weight"] = m.lora_A["default"].weight.detach().clone()
        ctensors["diffusion_model." + path + ".lora_up.weight"] = m.lora_B["default"].weight.detach().clone()
    write_safetensors(os.path.join(OUT, "comfy_noalpha.safetensors"), ctensors)
    un = unmerged_cases(cmods, "comfy", lambda p, x: cmods[p](x))
    ref.add_case("comfy_noalpha.unmerged", un, scale=1.0)
    merged = merged_weights(cm.merge_and_unload(), sorted(cmods))
    ref.add_case("comfy_noalpha.merged", merged_case(merged, un, sd))
    merged_all["comfy_noalpha"] = merged

    # --- LyCORIS LoKr ---
    for name, rank, alpha, factor, both, meta_rank, meta_alpha in [
        ("lokr_full", 114514, 114514, 4, False, "114514", "114514"),
        ("lokr_lowrank", 2, 3, 8, True, "2", "3"),
    ]:
        model, net = make_lokr(sd, name, rank, alpha, factor, both)
        loras = {lokr_module_path(l): l for l in net.loras}
        path_of = {n.replace(".", "_"): n for n in linear_paths(model)}
        loras = {path_of[k]: l for k, l in loras.items()}
        assert set(loras) == {p for p in linear_paths(model) if any(p.endswith(t) for t in TRAINER_TARGETS)}
        net.save_weights(os.path.join(OUT, name + ".safetensors"), dtype=None,
                         metadata={"adapter_type": "lyco_lokr", "lora_rank": meta_rank, "lora_alpha": meta_alpha})
        # rewritten byte-reproducibly (same tensors and metadata; safetensors orders the metadata
        # keys differently from run to run)
        fpath = os.path.join(OUT, name + ".safetensors")
        with safe_open(fpath, "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            meta = fh.metadata()
        write_safetensors(fpath, tensors, meta)
        kinds = set()
        for l in loras.values():
            kinds.add(("w1" if l.use_w1 else "w1ab", "w2" if l.use_w2 else "w2ab"))
        print(name, "factor kinds", sorted(kinds), "scales", sorted({float(l.scale) for l in loras.values()}))
        g = {}
        for p, l in sorted(loras.items()):
            x = torch.randn(3, l.shape[1], generator=generator("lora.x." + name + p))
            g[p + ".x"] = x
            g[p + ".y"] = l.bypass_forward(x, scale=1.0)
        ref.add_case(name + ".unmerged", g)
        # merged: the LoKr module's own (training) forward, x (W + delta W)^T with delta W from
        # get_weight; not merge_to, which in lycoris-lora 4.1.3 applies alpha / rank twice
        # (get_diff_weight multiplies get_weight, already scaled, by the scale again)
        ref.add_case(name + ".merged", {p + ".y": l(g[p + ".x"]) for p, l in sorted(loras.items())})
        merged = lokr_merged(loras, 1.0)
        check_merge_to_double_scale(loras, merged)
        merged_all[name] = merged

    # --- combined: PEFT at 0.7 and LoKr (low rank) at 1.3 on the same model ---
    model_c, net_c = make_lokr(None, "lokr_lowrank", 2, 3, 8, True, multiplier=1.3, model=merged_peft_c)
    lokr_c = {lokr_module_path(l): l for l in net_c.loras}
    # unmerged: PEFT layer forward (scale 0.7) + LyCORIS bypass diff (1.3)
    pm_u = make_peft(sd, "peft", r=4, alpha=2, targets=peft_targets)
    umods = peft_modules(pm_u)
    for m in umods.values():
        m.set_scale("default", 0.7)
    path_of = {n.replace(".", "_"): n for n in linear_paths(model_c)}
    lokr_c = {path_of[k]: l for k, l in lokr_c.items()}
    gu = {}
    for p in sorted(set(umods) | set(lokr_c)):
        fin = (umods[p].base_layer if p in umods else lokr_c[p].org_module[0]).in_features
        x = torch.randn(3, fin, generator=generator("lora.x.combined" + p))
        y = umods[p](x) if p in umods else torch.nn.functional.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))
        if p in lokr_c:
            y = y + lokr_c[p].bypass_forward_diff(x, scale=1.3)
        gu[p + ".x"] = x
        gu[p + ".y"] = y
    ref.add_case("combined.unmerged", gu)
    # merged: PEFT merge_and_unload at 0.7, then the LoKr module's forward at multiplier 1.3
    ref.add_case("combined.merged", {p + ".y": (lokr_c[p](gu[p + ".x"]) if p in lokr_c else
                                                 torch.nn.functional.linear(gu[p + ".x"], *linear_of(model_c, p)))
                                     for p in sorted(set(umods) | set(lokr_c))})
    merged = merged_weights(model_c, sorted(set(umods) | set(lokr_c)))
    merged.update(lokr_merged(lokr_c, 1.3))
    merged_all["combined"] = merged

    # --- the DiT with merged weights (diffusers forward, fp32, the DiT fixtures' inputs) ---
    dref = safe_open(os.path.join(DIT, "reference.safetensors"), "pt")
    x, t, cap, mask, clip = (dref.get_tensor("inputs/" + n) for n in ("x", "t", "cap", "mask", "clip"))
    base = dit.forward(model_a, x, t, cap, mask, clip, torch.float32)
    assert torch.allclose(base, dref.get_tensor("a.fwd.f32/out"), atol=1e-6), "model A forward differs from the DiT fixture"
    for name, merged in merged_all.items():
        out = dit.forward(to_diffusers(model_a, merged), x, t, cap, mask, clip, torch.float32)
        rel = float((out - base).norm() / base.norm())
        print(f"dit.{name}: output moved by {rel:.3e} (relative L2) from the base model")
        assert rel > 1e-3, name
        ref.add_case("dit." + name, {"out": out})
    # --- PEFT on diffusers' Lumina2 model itself (diffusers names: to_q / to_k / to_v split) ---
    import copy
    dm = copy.deepcopy(model_a)
    dcfg = LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, bias="none",
                      target_modules=["to_q", "to_k", "to_v", "to_out.0", "feed_forward.linear_2", "norm1.linear"])
    dpm = get_peft_model(dm, dcfg)
    randomize([(n, p) for n, p in dpm.named_parameters() if "lora_" in n], "diffusers")
    dpm.eval()
    ddir = os.path.join(OUT, "diffusers_peft")
    dpm.save_pretrained(ddir)
    for extra in os.listdir(ddir):
        if extra not in ("adapter_model.safetensors", "adapter_config.json"):
            os.remove(os.path.join(ddir, extra))
    with open(os.path.join(ddir, "adapter_config.json")) as f:
        cfg = json.load(f)
    keep = {k: cfg[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                                "use_rslora", "use_dora", "fan_in_fan_out", "bias", "lora_dropout") if k in cfg}
    keep["target_modules"] = sorted(keep["target_modules"])
    with open(os.path.join(ddir, "adapter_config.json"), "w") as f:
        json.dump(keep, f, indent=2, sort_keys=True)
    dkeys = sorted(safe_open(os.path.join(ddir, "adapter_model.safetensors"), "pt").keys())
    assert any(".attn.to_q.lora_A." in k for k in dkeys) and not any("time_caption_embed" in k for k in dkeys), dkeys[:6]
    # the same factors as a diffusers-pipeline file: transformer.<name>.lora_A / lora_B, no alpha (r = alpha: scale 1)
    with safe_open(os.path.join(ddir, "adapter_model.safetensors"), "pt") as fh:
        tensors = {"transformer." + k[len("base_model.model."):]: fh.get_tensor(k) for k in fh.keys()}
    write_safetensors(os.path.join(OUT, "diffusers_transformer.safetensors"), tensors)
    base_model = dpm.base_model.model
    unmerged_out = dit.forward(base_model, x, t, cap, mask, clip, torch.float32)
    merged_model = dpm.merge_and_unload()
    merged_out = dit.forward(merged_model, x, t, cap, mask, clip, torch.float32)
    print(f"dit.diffusers: merged vs unmerged {float((merged_out - unmerged_out).norm() / unmerged_out.norm()):.2e}, "
          f"moved {float((merged_out - base).norm() / base.norm()):.3e} from the base model")
    ref.add_case("dit.diffusers_peft", {"out": merged_out, "unmerged": unmerged_out})
    ref.save()
    for root, _, files in os.walk(OUT):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
