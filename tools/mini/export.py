#!/usr/bin/env python3
"""Assembles NewBie-mini in the official Hugging Face layout from a training run.

    /work/venv/bin/python tools/mini/export.py TRAIN_DIR TEXT_DIR MODEL_DIR

TRAIN_DIR: what tools/mini/train.py wrote (vae/, transformer_diffusers.safetensors,
transformer_config.json, train_log.json). TEXT_DIR: the frozen text encoders (text_encoder/,
clip_model/ with their tokenizers). MODEL_DIR gets transformer/ (official NextDiT_CLIP names, fused
qkv, bf16, config.json in the official keys), vae/ (diffusers AutoencoderKL, bf16), text_encoder/,
clip_model/ and model_index.json. The diffusers -> official renaming is the DiT fixtures' mapping
(tools/reference/make_dit_fixtures.py, pinned venv).
"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import make_dit_fixtures as D  # noqa: E402  (pinned-version check at import)


class Loaded:
    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


def main(train, text, out):
    cfg = json.load(open(os.path.join(train, "transformer_config.json")))
    sd = load_file(os.path.join(train, "transformer_diffusers.safetensors"))
    official = D.official_state(Loaded(sd))
    official["norm_final.weight"] = torch.ones(cfg["dim"])   # carried by official checkpoints, unused
    os.makedirs(os.path.join(out, "transformer"), exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in sorted(official.items())},
              os.path.join(out, "transformer", "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt", "note": "NewBie-mini DiT (tools/mini), official NextDiT_CLIP naming"})
    with open(os.path.join(out, "transformer", "config.json"), "w") as f:
        json.dump({"_class_name": "NextDiT_3B_GQA_patch2_Adaln_Refiner_WHIT_CLIP", "model_type": "nextdit_clip",
                   "patch_size": 2, "in_channels": 16, "dim": cfg["dim"], "n_layers": cfg["layers"],
                   "n_refiner_layers": cfg["refiners"], "n_heads": cfg["heads"], "n_kv_heads": cfg["kv_heads"],
                   "axes_dims": list(cfg["axes"]), "axes_lens": list(cfg["axes_lens"]), "cap_feat_dim": cfg["cap_dim"],
                   "clip_text_dim": cfg["clip_dim"], "clip_img_dim": cfg["clip_dim"], "norm_eps": cfg["norm_eps"]},
                  f, indent=2, sort_keys=True)

    vae_out = os.path.join(out, "vae")
    os.makedirs(vae_out, exist_ok=True)
    vsd = load_file(os.path.join(train, "vae", "diffusion_pytorch_model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in vsd.items()},
              os.path.join(vae_out, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(train, "vae", "config.json"), os.path.join(vae_out, "config.json"))

    for part in ("text_encoder", "clip_model"):
        shutil.rmtree(os.path.join(out, part), ignore_errors=True)
        shutil.copytree(os.path.join(text, part), os.path.join(out, part))
    shutil.copy(os.path.join(text, "model_index.json"), os.path.join(out, "model_index.json"))
    note = "NewBie-mini (tools/mini): a small NewBie trained on synthetic scenes; frozen random text encoders. See README.md."
    for rel in ("text_encoder/config.json", "clip_model/config.json", "model_index.json"):
        path = os.path.join(out, rel)
        with open(path) as f:
            j = json.load(f)
        j["_note"] = note
        with open(path, "w") as f:
            json.dump(j, f, indent=2, sort_keys=True)
    shutil.copy(os.path.join(train, "train_log.json"), os.path.join(out, "train_log.json"))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(*sys.argv[1:4])
