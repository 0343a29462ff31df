#!/usr/bin/env python3
"""Tokenizers of NewBie-mini, trained on its own captions (tools/mini/scene.py), in the published
formats the engine reads:
  gemma_tokenizer.json  Gemma 3 style BPE (normalizer Replace(" ", "▁"), byte fallback, Gemma's
                        special ids 0-4 and the 256 <0xXX> byte tokens, <bos> template), built
                        with transformers' GemmaTokenizer as for the real Gemma 3;
  jina_tokenizer.json   XLM-R style Unigram (sentencepiece, nmt_nfkc Precompiled normalizer,
                        Metaspace, fairseq ids <s> <pad> </s> <unk> ... <mask>), as jina-clip-v2's.
Both see the system prompts too, so every word of a caption is one or two tokens.

Pinned (the reference venv): transformers 5.23.0, tokenizers 0.23.3, sentencepiece 0.2.3,
numpy 2.4.6. Run from the repository root:
    /work/venv/bin/python tools/mini/make_tokenizers.py OUT_DIR
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers.models.gemma.tokenization_gemma import GemmaTokenizer  # noqa: E402

import scene as S  # noqa: E402
import make_jina_fixtures as J  # noqa: E402  (its pinned-version check runs at import)

SYSTEM_XML = ("You are an assistant designed to generate high-quality anime images based on xml format prompts. "
              "<Prompt Start> ")
SYSTEM_TEXT = ("You are an assistant designed to generate high-quality anime images with the highest degree of "
               "image-text alignment based on textual prompts. <Prompt Start> ")


def corpus(n=4000, seed=1234):
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        sc = S.random_scene(rng)
        lines += [SYSTEM_XML + S.xml_caption(sc), SYSTEM_TEXT + S.tag_caption(sc, rng)]
    return lines


def gemma_tokenizer(lines, path, vocab_size=700):
    base = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    base.normalizer = normalizers.Replace(" ", "\u2581")
    # training only: merges never cross markup, underscores, commas or spaces, so the tokens are
    # words and marks (the saved tokenizer, like Gemma's, has no pre-tokenizer: BPE then finds the
    # same pieces because no merge joins across those characters)
    base.pre_tokenizer = pre_tokenizers.Split(Regex("[<>/_,.\u2581$-]"), behavior="isolated")
    base.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=80, show_progress=False))
    trained = json.loads(base.to_str())["model"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.backend_tokenizer.save(path)
    return len(vocab)


def jina_tokenizer(lines, path, vocab_size=400):
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "train.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        spm.SentencePieceTrainer.train(
            input=os.path.join(d, "train.txt"), model_prefix=os.path.join(d, "sp"), vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, normalization_rule_name="nmt_nfkc",
            num_threads=1, minloglevel=2)
        _, published, _, n = J.build_tokenizers(os.path.join(d, "sp.model"))
    published.save(path)
    return n


def main(out):
    os.makedirs(out, exist_ok=True)
    lines = corpus()
    g = gemma_tokenizer(lines, os.path.join(out, "gemma_tokenizer.json"))
    j = jina_tokenizer(lines, os.path.join(out, "jina_tokenizer.json"))
    t = Tokenizer.from_file(os.path.join(out, "gemma_tokenizer.json"))
    lens = [len(t.encode(line).ids) for line in lines]
    print(f"gemma vocabulary {g}, jina vocabulary {j}; Gemma tokens per caption (system prompt included): "
          f"mean {np.mean(lens):.0f}, max {max(lens)}")


if __name__ == "__main__":
    main(sys.argv[1])
