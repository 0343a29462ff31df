#!/usr/bin/env python3
"""Reference fixtures for the Jina CLIP v2 text tower and its XLM-RoBERTa Unigram tokenizer (issue #7).

Regenerate (from the repository root, ~10 s on the CPU):
    /work/venv/bin/python tools/reference/make_jina_fixtures.py
A random checkpoint for timing (not a fixture): ... make_jina_fixtures.py --bench /tmp/jina_mid.safetensors
(mid-size: 768 / 12 layers / 3072), or --bench /tmp/jina_full.safetensors 1024 24 4096 (jina-clip-v2 shape).
It writes Tests/Fixtures/jina/:
    tokenizer.json              XLM-R style Unigram tokenizer (real SentencePiece nmt_nfkc precompiled_charsmap)
    tokenizer_metaspace.json    same model, published-XLM-R pipeline shape (Precompiled + Metaspace only)
    tokenizer_cases.json        corpus + expected ids from the HF `tokenizers` library, for both files,
                                plus padded/truncated batches and normalizer strings
    tower_official.safetensors  tiny tower in the jina-clip-v2 layout (LoRA-parametrized, plus ignored
                                vision_model.* / logit_scale tensors), fp32
    tower_official_bf16.safetensors  same weights stored in bf16
    tower_comfy.safetensors     tiny tower in the ComfyUI single-file layout (LoRA already merged), fp32
    tower_cases.safetensors     input ids of a padded batch and the reference pooled outputs (fp32, bf16)

Pinned versions (asserted below): torch 2.15.0, transformers 5.23.0, tokenizers 0.23.3,
sentencepiece 0.2.3, safetensors 0.8.0, numpy 2.4.6.

No PyPI package carries jina-clip-v2's text tower. What this script uses, and what was confirmed where:
  * Tokenizer: a small SentencePiece Unigram model is trained here with `sentencepiece` (default
    normalization rule nmt_nfkc, so the model embeds a genuine precompiled_charsmap: XCDA double-array
    trie + NUL-separated normalized strings). The charsmap is read out of the model proto (a tiny
    protobuf reader below; `protobuf` is not installed) and the fast tokenizer is assembled exactly as
    transformers 5.23 `XLMRobertaTokenizer.__init__` does (fairseq layout: <s>=0 <pad>=1 </s>=2 <unk>=3,
    then the SentencePiece pieces from index 3 on, <mask> last; unk_id 3; Precompiled normalizer;
    WhitespaceSplit + Metaspace(always) pre-tokenizer; TemplateProcessing "<s> $A </s>").
    Expected ids come from the HF `tokenizers` library itself (Tokenizer.from_file on the written
    JSON). The real 250,002-piece XLM-R vocabulary is not available offline; only this small trained
    model is tested.
    Observed here (tokenizers 0.23.3): its Precompiled normalizer works per extended grapheme cluster:
    a cluster shorter than 6 bytes with any trie match is replaced as a whole by the replacement of the
    *shortest* matching prefix (e.g. "\r\n" -> " ", "Ａ\u0301" -> "A"); otherwise per code point.
    SentencePiece itself uses the longest match and consumes only the matched bytes ("Ａ\u0301" -> "Á").
    The fixture records both (spm strings from sentencepiece.normalize) so each mode is tested.
  * Backbone: transformers 5.23 `JinaEmbeddingsV3Model` (models/jina_embeddings_v3), the HF port of
    jinaai/xlm-roberta-flash-implementation. Confirmed there: rotary base 20000 (default_theta),
    LLaMA rotate-half rotary over the full head dim, post-norm layers (x = LN1(x + attn), x = LN2(x + mlp)),
    word + token_type[0] embeddings then LayerNorm (emb_ln), exact GELU, fused Wqkv chunked Q|K|V along
    dim 0 (conversion_mapping.py "jina_embeddings_v3"), emb_ln -> embeddings.LayerNorm, norm1/norm2.
    Confirmed in the Jina code (xlm-roberta-flash-implementation modeling_xlm_roberta.py, read via
    the public store): rotary_emb_dim = hidden/heads, rotary_emb_interleaved False, Block prenorm=False.
  * LoRA (retrieval.query), confirmed in xlm-roberta-flash-implementation modeling_lora.py
    `LoRAParametrization`: linear A [n, r, in], B [n, out, r], W_eff = W + (B[t] @ A[t]) * alpha/r;
    embedding A [n, vocab, r], B [n, r, dim] (swapped), W_eff = W + (A[t] @ B[t]) * alpha/r.
    jina-clip-v2: lora_rank 4, lora_alpha 4 (scale 1), one adaptation, default task active in
    get_text_features. This script merges exactly that way (in the model dtype, as the parametrization
    does at run time) and loads the merged weights into JinaEmbeddingsV3Model; an independent
    hand-written module (SpecTower below) applying LoRA at run time cross-checks it.
  * Pooling (jina-clip-implementation hf_model.py, spec 5.4): attention mask = (input_ids != pad 1),
    mean over real tokens of the last hidden state; no projection, no normalisation.
"""
import base64
import json
import math
import os
import struct
import sys
import tempfile

PINS = {"torch": "2.15.0", "transformers": "5.23.0", "tokenizers": "0.23.3",
        "sentencepiece": "0.2.3", "safetensors": "0.8.0", "numpy": "2.4.6"}


def check_versions():
    import importlib
    bad = []
    for mod, want in PINS.items():
        have = importlib.import_module(mod).__version__
        if have.split("+")[0] != want:
            bad.append(f"{mod} {have} (want {want})")
    if bad:
        sys.exit("pinned versions needed: " + ", ".join(bad))


check_versions()

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "jina")
os.makedirs(OUT, exist_ok=True)

# ----------------------------------------------------------------------------------------------
# 1. Tokenizer
# ----------------------------------------------------------------------------------------------
TRAIN = [
    "The quick brown fox jumps over the lazy dog while the girl watches from the window.",
    "A girl with long silver hair and blue eyes, smiling, wearing a school uniform and a red ribbon.",
    "masterpiece, best quality, highly detailed, anime style, soft lighting, cherry blossoms, night sky",
    "<character>1girl, solo, long hair, looking at viewer</character><general>outdoors, smile</general>",
    "<artist>unknown</artist><style>watercolor, sketch</style><background>city street at night</background>",
    "一个穿着红色连衣裙的女孩站在樱花树下，微笑着看着镜头。高质量，杰作，细节丰富。",
    "天空中有很多星星，城市的灯光很漂亮。她的头发是银色的，眼睛是蓝色的。",
    "桜の木の下に立つ赤いドレスの少女。最高品質、傑作、詳細な背景。",
    "夜の街を歩く少年と猫。雨が降っている。カメラを見て笑っている。",
    "Le renard brun rapide saute par-dessus le chien paresseux. Café, naïve, résumé, élève.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Straße, Mädchen, schön.",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Девушка улыбается.",
    "Numbers 0123456789, prices $12.50 and 99%, dates 2024-01-31, times 12:30.",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ﬁ ﬂ ① ② ㈱ ½ ｶﾀｶﾅ ﾊﾟﾝ ㌀",
    "Emoji 😀 🎨 ✨ 🌸 are common in prompts too.",
]


def train_spm(workdir):
    text = "\n".join(TRAIN * 20) + "\n"
    path = os.path.join(workdir, "train.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    prefix = os.path.join(workdir, "sp")
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=prefix, vocab_size=400, model_type="unigram",
        character_coverage=0.995, hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
        seed_sentencepiece_size=100000, num_threads=1, minloglevel=2)
    return prefix + ".model"


def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]; i += 1; r |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return r, i


def _fields(b):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v = b[i:i + 8]; i += 8
        elif wt == 2:
            n, i = _varint(b, i); v = b[i:i + n]; i += n
        elif wt == 5:
            v = b[i:i + 4]; i += 4
        else:
            raise ValueError(f"wire type {wt}")
        yield f, v


def read_spm_proto(path):
    """ModelProto: 1 = pieces {1 piece, 2 score (float), 3 type}, 3 = normalizer_spec {2 precompiled_charsmap}."""
    data = open(path, "rb").read()
    pieces, charsmap = [], None
    for f, v in _fields(data):
        if f == 1:
            p = {"type": 1, "score": 0.0}
            for g, w in _fields(v):
                if g == 1: p["piece"] = w.decode("utf-8")
                elif g == 2: p["score"] = struct.unpack("<f", w)[0]
                elif g == 3: p["type"] = w
            pieces.append(p)
        elif f == 3:
            for g, w in _fields(v):
                if g == 2: charsmap = bytes(w)
    return pieces, charsmap


def build_tokenizers(model_path):
    pieces, charsmap = read_spm_proto(model_path)
    assert charsmap and len(charsmap) > 100000, "expected a real nmt_nfkc charsmap"
    assert [p["piece"] for p in pieces[:3]] == ["<unk>", "<s>", "</s>"]
    # fairseq layout, as transformers' XLMRobertaConverter / XLMRobertaTokenizer build it
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(p["piece"], float(p["score"])) for p in pieces[3:]]
    vocab += [("<mask>", 0.0)]

    def make(pre):
        tok = Tokenizer(Unigram(vocab=vocab, unk_id=3, byte_fallback=False))
        tok.normalizer = normalizers.Precompiled(charsmap)
        tok.pre_tokenizer = pre
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        from tokenizers import AddedToken
        tok.add_special_tokens([AddedToken("<s>", normalized=False), AddedToken("<pad>", normalized=False),
                                AddedToken("</s>", normalized=False), AddedToken("<unk>", normalized=False),
                                AddedToken("<mask>", normalized=False, lstrip=True)])
        tok.post_processor = processors.TemplateProcessing(
            single=["<s>", "$A", "</s>"], pair=["<s>", "$A", "</s>", "</s>", "$B", "</s>"],
            special_tokens=[("<s>", 0), ("</s>", 2)])
        return tok

    # transformers 5.23 XLMRobertaTokenizer pipeline
    hf = make(pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                       pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]))
    # the shape of the published xlm-roberta tokenizer.json (Precompiled + Metaspace, split on ▁)
    ms = make(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True))
    return hf, ms, charsmap, len(vocab)


CORPUS = [
    "",
    " ",
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A girl with long silver hair, blue eyes, smiling.",
    "<character>1girl, solo, long hair</character><general>masterpiece, best quality</general>",
    "<?xml version=\"1.0\"?><prompt lang='en'><tag a=\"b\">x &amp; y</tag></prompt>",
    "一个穿着红色连衣裙的女孩站在樱花树下。",
    "桜の木の下に立つ赤いドレスの少女、最高品質。",
    "カタカナとひらがなと漢字が混ざった文。ｶﾀｶﾅ ﾊﾟﾝ",
    "Emoji: 😀🎨✨🌸 👩‍👩‍👧 🇯🇵 ❤️ 👍🏽",
    "  leading and trailing spaces   ",
    "multiple   spaces\tand\ttabs\nnew\nlines\r\nwindows\u3000ideographic\u00a0nbsp",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ﬁ ﬂ ① ㈱ ½ ㌀",
    "combining: e\u0301 A\u030a\u0323 Ａ\u0301 n\u0303 ｶ\u3099",
    "Café naïve résumé élève Straße Mädchen",
    "Быстрая коричневая лиса; Ελληνικά; עברית; العربية; हिन्दी; 한국어 텍스트",
    "unknown chars: ☃ ⚙ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ᚠᛇᚻ",
    "specials inline: <s> middle </s> and <mask> and <pad> and <unk>",
    "a<mask>b  <mask> c",
    "prices $12.50, 99%, 2024-01-31 12:30 -- ``quotes'' \"double\" 'single'",
    "ALL CAPS and MiXeD cAsE and snake_case and kebab-case and CamelCase",
    "x" * 50,
    "‼ ⁇ № ™ ℃ Ⅻ ｟ ｠ ﹏ ︵",
]

# plus the Gemma tokenizer's corpus (tools/reference/make_gemma_tokenizer_fixtures.py), so both
# tokenizers are tested on the same texts (system prompt + XML, literal specials, long prompt, ...)
with open(os.path.join(ROOT, "Tests", "Fixtures", "gemma", "tokenizer_corpus.json"), encoding="utf-8") as _f:
    CORPUS += [t for t in json.load(_f)["corpus"] if t not in CORPUS]

NORMALIZE_STRINGS = ["a\r\nb", "Ａ\u0301", "e\u0301", "ｶﾞ", "ｶ\u3099", "x\u00a0y", "ﬁ①", "\u200b",
                     "A\u030a\u0323", "㌀", "🇯🇵", "👩‍👩‍👧", "Ｆｕｌｌ", "½", "ﾊﾟﾝ", "\u3000x", "é"]


def tokenizer_fixtures(workdir):
    model_path = train_spm(workdir)
    hf, ms, charsmap, vocab_size = build_tokenizers(model_path)
    hf.save(os.path.join(OUT, "tokenizer.json"))
    ms.save(os.path.join(OUT, "tokenizer_metaspace.json"))
    # re-read from disk: the expected ids come from the JSON the Swift side reads
    hf = Tokenizer.from_file(os.path.join(OUT, "tokenizer.json"))
    ms = Tokenizer.from_file(os.path.join(OUT, "tokenizer_metaspace.json"))
    sp = spm.SentencePieceProcessor(model_file=model_path)
    prec = normalizers.Precompiled(charsmap)

    cases = {"vocab_size": vocab_size, "corpus": []}
    n_unk = 0
    for text in CORPUS:
        a = hf.encode(text).ids
        b = ms.encode(text).ids
        n_unk += a.count(3)
        cases["corpus"].append({"text": text, "ids": a, "ids_metaspace": b,
                                "tokens": hf.encode(text).tokens})
    assert n_unk > 0, "corpus should exercise the unknown token"
    # padded / truncated batches (what NewBie does: padding=True (longest), truncation=True)
    batch = ["A girl with long silver hair, blue eyes, smiling.", "", "一个穿着红色连衣裙的女孩站在樱花树下。"]
    hf.enable_padding(pad_id=1, pad_token="<pad>")
    hf.enable_truncation(max_length=12)
    enc = hf.encode_batch(batch)
    cases["batch_trunc12"] = {"texts": batch, "max_length": 12,
                              "ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
    hf.no_truncation()
    enc = hf.encode_batch(batch)
    cases["batch_longest"] = {"texts": batch, "ids": [e.ids for e in enc],
                              "attention_mask": [e.attention_mask for e in enc]}
    hf.no_padding()
    # normalizer strings: tokenizers' Precompiled, and SentencePiece's own normalizer
    cases["normalize"] = [{"text": s, "hf": prec.normalize_str(s), "spm": sp.normalize(s)} for s in NORMALIZE_STRINGS]
    with open(os.path.join(OUT, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
    return hf, vocab_size


# ----------------------------------------------------------------------------------------------
# 2. Text tower
# ----------------------------------------------------------------------------------------------
from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

TINY = dict(hidden=64, layers=2, heads=4, intermediate=128, rank=4, alpha=4.0, adaptations=1, type_vocab=1)
PREFIX = "text_model.transformer.roberta."
LINEARS = [("mixer.Wqkv", 3, 1), ("mixer.out_proj", 1, 1), ("mlp.fc1", 2, 1), ("mlp.fc2", 1, 2)]


def official_state(vocab, cfg, gen):
    """Random tiny weights in the jina-clip-v2 (LoRA-parametrized) layout, fp32."""
    h, inter, r, n = cfg["hidden"], cfg["intermediate"], cfg["rank"], cfg["adaptations"]
    def rnd(*shape, std=0.05):
        return (torch.randn(*shape, generator=gen) * std).float()
    sd = {}
    def emb(name, rows):
        sd[PREFIX + f"embeddings.{name}.parametrizations.weight.original"] = rnd(rows, h, std=0.5)
        sd[PREFIX + f"embeddings.{name}.parametrizations.weight.0.lora_A"] = rnd(n, rows, r, std=0.3)
        sd[PREFIX + f"embeddings.{name}.parametrizations.weight.0.lora_B"] = rnd(n, r, h, std=0.3)
    emb("word_embeddings", vocab)
    emb("token_type_embeddings", cfg["type_vocab"])
    sd[PREFIX + "emb_ln.weight"] = 1 + rnd(h, std=0.1)
    sd[PREFIX + "emb_ln.bias"] = rnd(h, std=0.1)
    dims = {"mixer.Wqkv": (3 * h, h), "mixer.out_proj": (h, h), "mlp.fc1": (inter, h), "mlp.fc2": (h, inter)}
    for i in range(cfg["layers"]):
        p = PREFIX + f"encoder.layers.{i}."
        for name, (o, k) in dims.items():
            sd[p + f"{name}.parametrizations.weight.original"] = rnd(o, k, std=1 / math.sqrt(k))
            sd[p + f"{name}.parametrizations.weight.0.lora_A"] = rnd(n, r, k, std=1 / math.sqrt(k))
            sd[p + f"{name}.parametrizations.weight.0.lora_B"] = rnd(n, o, r, std=0.3)
            sd[p + f"{name}.bias"] = rnd(o, std=0.05)
        for ln in ("norm1", "norm2"):
            sd[p + f"{ln}.weight"] = 1 + rnd(h, std=0.1)
            sd[p + f"{ln}.bias"] = rnd(h, std=0.1)
    # tensors the text tower must ignore
    sd["vision_model.patch_embed.proj.weight"] = rnd(8, 3, 2, 2)
    sd["vision_model.blocks.0.attn.qkv.weight"] = rnd(24, 8)
    sd["logit_scale"] = torch.tensor(4.6052)
    return sd


def merged(sd, cfg, dtype, task=0):
    """LoRA merged the way LoRAParametrization.lora_forward does it, in `dtype`."""
    scale = cfg["alpha"] / cfg["rank"]
    out = {}
    for k, v in sd.items():
        if not k.startswith(PREFIX):
            continue
        name = k[len(PREFIX):]
        if ".parametrizations.weight.0." in name:
            continue
        if name.endswith(".parametrizations.weight.original"):
            base = name[: -len(".parametrizations.weight.original")]
            A = sd[PREFIX + base + ".parametrizations.weight.0.lora_A"][task].to(dtype)
            B = sd[PREFIX + base + ".parametrizations.weight.0.lora_B"][task].to(dtype)
            W = v.to(dtype)
            if base.startswith("embeddings."):
                W = W + torch.matmul(A, B) * scale          # embedding: A [vocab, r] @ B [r, dim]
            else:
                W = W + torch.matmul(B, A) * scale          # linear: B [out, r] @ A [r, in]
            out[base + ".weight"] = W
        else:
            out[name] = v.to(dtype)
    return out


def hf_model(vocab, cfg, weights, dtype):
    c = JinaEmbeddingsV3Config(vocab_size=vocab, hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                               num_attention_heads=cfg["heads"], intermediate_size=cfg["intermediate"],
                               type_vocab_size=cfg["type_vocab"], hidden_act="gelu", layer_norm_eps=1e-5,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
    c._attn_implementation = "eager"
    assert c.rope_parameters["rope_theta"] == 20000.0, c.rope_parameters
    m = JinaEmbeddingsV3Model(c, add_pooling_layer=False).eval()
    h = cfg["hidden"]
    sd = {"embeddings.word_embeddings.weight": weights["embeddings.word_embeddings.weight"],
          "embeddings.token_type_embeddings.weight": weights["embeddings.token_type_embeddings.weight"],
          "embeddings.LayerNorm.weight": weights["emb_ln.weight"], "embeddings.LayerNorm.bias": weights["emb_ln.bias"]}
    for i in range(cfg["layers"]):
        p = f"encoder.layers.{i}."
        q = f"layers.{i}."
        W, b = weights[p + "mixer.Wqkv.weight"], weights[p + "mixer.Wqkv.bias"]
        for j, nm in enumerate(["q_proj", "k_proj", "v_proj"]):           # Wqkv rows Q|K|V
            sd[q + f"self_attn.{nm}.weight"] = W[j * h:(j + 1) * h]
            sd[q + f"self_attn.{nm}.bias"] = b[j * h:(j + 1) * h]
        sd[q + "self_attn.o_proj.weight"] = weights[p + "mixer.out_proj.weight"]
        sd[q + "self_attn.o_proj.bias"] = weights[p + "mixer.out_proj.bias"]
        sd[q + "mlp.fc1.weight"] = weights[p + "mlp.fc1.weight"]
        sd[q + "mlp.fc1.bias"] = weights[p + "mlp.fc1.bias"]
        sd[q + "mlp.fc2.weight"] = weights[p + "mlp.fc2.weight"]
        sd[q + "mlp.fc2.bias"] = weights[p + "mlp.fc2.bias"]
        sd[q + "post_attention_layernorm.weight"] = weights[p + "norm1.weight"]
        sd[q + "post_attention_layernorm.bias"] = weights[p + "norm1.bias"]
        sd[q + "post_mlp_layernorm.weight"] = weights[p + "norm2.weight"]
        sd[q + "post_mlp_layernorm.bias"] = weights[p + "norm2.bias"]
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return m.to(dtype)


def pooled_reference(model, ids):
    mask = (ids != 1).long()                        # hf_model.py: attention mask from the pad id
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hs.dtype)
    return (hs * m).sum(dim=1) / m.sum(dim=1)       # mean over real tokens, model dtype


class SpecTower(torch.nn.Module):
    """Independent check written from spec section 5 (fp32 only): LoRA applied at run time."""

    def __init__(self, sd, cfg):
        super().__init__()
        self.sd, self.cfg = sd, cfg

    def w(self, base):
        sd, s = self.sd, self.cfg["alpha"] / self.cfg["rank"]
        W = sd[PREFIX + base + ".parametrizations.weight.original"]
        A = sd[PREFIX + base + ".parametrizations.weight.0.lora_A"][0]
        B = sd[PREFIX + base + ".parametrizations.weight.0.lora_B"][0]
        return W + (A @ B if base.startswith("embeddings.") else B @ A) * s

    def forward(self, ids):
        cfg, sd = self.cfg, self.sd
        h, nh = cfg["hidden"], cfg["heads"]
        d = h // nh
        B, L = ids.shape
        x = self.w("embeddings.word_embeddings")[ids] + self.w("embeddings.token_type_embeddings")[0]
        x = torch.nn.functional.layer_norm(x, (h,), sd[PREFIX + "emb_ln.weight"], sd[PREFIX + "emb_ln.bias"], 1e-5)
        inv = 1.0 / (20000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().float(), ang.sin().float()
        def rot(t):  # [B, L, H, D], rotate-half
            t1, t2 = t[..., : d // 2], t[..., d // 2:]
            c, s = cos[None, :, None, :], sin[None, :, None, :]
            return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], dim=-1)
        keep = ids != 1
        for i in range(cfg["layers"]):
            p = f"encoder.layers.{i}."
            qkv = torch.nn.functional.linear(x, self.w(p + "mixer.Wqkv"), sd[PREFIX + p + "mixer.Wqkv.bias"])
            q, k, v = qkv.view(B, L, 3, nh, d).unbind(2)
            q, k = rot(q), rot(k)
            s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
            s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
            a = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, L, h)
            a = torch.nn.functional.linear(a, self.w(p + "mixer.out_proj"), sd[PREFIX + p + "mixer.out_proj.bias"])
            x = torch.nn.functional.layer_norm(x + a, (h,), sd[PREFIX + p + "norm1.weight"], sd[PREFIX + p + "norm1.bias"], 1e-5)
            m = torch.nn.functional.linear(x, self.w(p + "mlp.fc1"), sd[PREFIX + p + "mlp.fc1.bias"])
            m = torch.nn.functional.linear(torch.nn.functional.gelu(m), self.w(p + "mlp.fc2"), sd[PREFIX + p + "mlp.fc2.bias"])
            x = torch.nn.functional.layer_norm(x + m, (h,), sd[PREFIX + p + "norm2.weight"], sd[PREFIX + p + "norm2.bias"], 1e-5)
        km = keep.unsqueeze(-1).float()
        return (x * km).sum(1) / km.sum(1)


def tower_fixtures(tok, vocab):
    gen = torch.Generator().manual_seed(7)
    cfg = TINY
    sd = official_state(vocab, cfg, gen)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(OUT, "tower_official.safetensors"),
              metadata={"config": json.dumps(cfg)})
    sd_bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}
    save_file(sd_bf16, os.path.join(OUT, "tower_official_bf16.safetensors"), metadata={"config": json.dumps(cfg)})
    w32 = merged(sd, cfg, torch.float32)
    comfy = {"model." + k: v.contiguous() for k, v in w32.items()}
    save_file(comfy, os.path.join(OUT, "tower_comfy.safetensors"), metadata={"config": json.dumps(cfg)})

    # padded batch of 2 with different lengths (right padding, pad id 1), as the tokenizer pads
    texts = ["<character>1girl, silver hair</character> 桜の木の下に立つ少女 😀", "a girl"]
    tok.enable_padding(pad_id=1, pad_token="<pad>")
    enc = tok.encode_batch(texts)
    tok.no_padding()
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    assert (ids == 1).any() and ids.shape[0] == 2
    m32 = hf_model(vocab, cfg, w32, torch.float32)
    out32 = pooled_reference(m32, ids)
    spec = SpecTower(sd, cfg)(ids)
    err = ((spec - out32).norm() / out32.norm()).item()
    assert err < 1e-5, f"SpecTower vs JinaEmbeddingsV3Model: {err}"
    # LoRA must matter (otherwise the merge is untested)
    nolora = {k: v for k, v in w32.items()}
    for k in list(nolora):
        pk = PREFIX + k.replace(".weight", ".parametrizations.weight.original")
        if pk in sd:
            nolora[k] = sd[pk]
    diff = ((pooled_reference(hf_model(vocab, cfg, nolora, torch.float32), ids) - out32).norm() / out32.norm()).item()
    assert diff > 0.05, f"LoRA changes the output by only {diff}"
    # per-sample check: the padded sample equals the same text run alone
    alone = pooled_reference(m32, ids[1:2, : int((ids[1] != 1).sum())])
    assert ((alone - out32[1:2]).norm() / alone.norm()).item() < 1e-5
    # bf16: stored bf16 weights, LoRA merged in bf16, module run in bf16
    w16 = merged({k: v for k, v in sd_bf16.items()}, cfg, torch.bfloat16)
    m16 = hf_model(vocab, cfg, w16, torch.bfloat16)
    out16 = pooled_reference(m16, ids)
    err16 = ((out16.float() - out32).norm() / out32.norm()).item()
    save_file({"input_ids": ids.to(torch.int32).contiguous(), "pooled_fp32": out32.contiguous(),
               "pooled_bf16": out16.float().contiguous(), "pooled_nolora_diff": torch.tensor([diff])},
              os.path.join(OUT, "tower_cases.safetensors"),
              metadata={"config": json.dumps(cfg), "texts": json.dumps(texts, ensure_ascii=False),
                        "generator": "tools/reference/make_jina_fixtures.py",
                        "versions": json.dumps(PINS)})
    print(f"tower: ids {list(ids.shape)}, spec-vs-hf {err:.2e}, lora effect {diff:.3f}, bf16-vs-fp32 {err16:.2e}")


def bench_checkpoint(path, hidden=768, layers=12, intermediate=3072, vocab=306):
    """A random mid-size tower (XLM-R base shape, head dim 64) in the official layout, for timing only:
    `newbie encode-text --jina PATH --jina-tokenizer Tests/Fixtures/jina/tokenizer.json ...`."""
    cfg = dict(TINY, hidden=hidden, layers=layers, intermediate=intermediate, heads=hidden // 64)
    sd = official_state(vocab, cfg, torch.Generator().manual_seed(1))
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={"config": json.dumps(cfg)})
    print(f"wrote {path}: {cfg}")


if __name__ == "__main__":
    if len(sys.argv) in (3, 6) and sys.argv[1] == "--bench":   # --bench PATH [HIDDEN LAYERS INTERMEDIATE]
        sizes = [int(x) for x in sys.argv[3:]]
        bench_checkpoint(sys.argv[2], *sizes)
        sys.exit(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        tok, vocab = tokenizer_fixtures(work)
    print(f"tokenizer: vocab {vocab}")
    tower_fixtures(tok, vocab)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")
