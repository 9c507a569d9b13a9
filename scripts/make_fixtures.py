#!/usr/bin/env python3
"""Builds the architecture fixtures in tests/data/fixtures/ and records llama.cpp's outputs on them.

Run through scripts/make-fixtures.sh, which installs llama-cpp-python (compiled from its source
package), numpy and the gguf package into the cache first. Deterministic: fixed seeds, fixed
prompts (token ids), two threads.

What is made (see tests/data/fixtures/README.md for sizes and uses):
- F32 models, 2 layers: `llama-f32` (n_embd 64, grouped-query attention 4/2, key_length 32 set
  explicitly (not n_embd / n_head), Llama 3.1 `rope_freqs`); n_embd 32: `llama-linear-f32` (one
  KV head, linear RoPE scaling x4, head size from the default), `qwen2-f32` (Q/K/V biases),
  `qwen3-f32` (per-head q/k norms, key_length 16, untied output matrix). Reference: llama.cpp's
  logits at every position of an 8-token prompt.
- Each F32 model quantized to Q8_0 by llama.cpp (`llama_model_quantize`): `tiny-llama`
  (the Llama one: the tiny model of the serving tests), `llama-linear-q8_0`, `qwen2-q8_0`,
  `qwen3-q8_0`. Reference: 32 greedy tokens.
- n_embd 256 models (Q4_K rows are 256-element super-blocks) quantized to Q4_K_M by llama.cpp
  (Q4_K with Q6_K for the output matrix and for attn_v / ffn_down of the last layer):
  `llama-q4_k`, `qwen2-q4_k`, `qwen3-q4_k`. Reference: 32 greedy tokens.

Vocabularies are real ones cut short to stay small: llama.cpp's test vocabularies
`ggml-vocab-llama-bpe.gguf` (Llama 3) and `ggml-vocab-qwen2.gguf` (Qwen2/2.5, also Qwen3's)
keep their first VOCAB_KEEP tokens (the 256 byte tokens and the earliest merges), the merges whose
two parts and result all survive (in their original order), `tokenizer.ggml.pre`, and the special
tokens a chat needs, renumbered to follow: Llama 3 `<|begin_of_text|>` (BOS), `<|end_of_text|>`,
`<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>` (EOS); Qwen `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` (EOS). Each model carries its family's chat template.

Weights are random (numpy, fixed seed) and scaled so logits are well spread: small embeddings
(std 0.05) with large final-norm weights (about 30), so the residual stream is led by the layers,
not by the current token's own embedding (with tied embeddings the input token would otherwise
win every step), and logits have a spread of about 10. A quantized model whose greedy run has a
top-2 logit margin under MARGIN_MIN at some step is rebuilt with the next seed (at most
SEED_TRIES), so a last-bit rounding difference cannot flip a token; so is one whose 32 greedy
tokens hold fewer than GREEDY_DISTINCT_MIN distinct ids (a run stuck repeating one token tests
little). The seed used is recorded.

How llama.cpp is run: llama-cpp-python's `Llama`, n_ctx 256, n_batch = n_ubatch = 256, 2 threads,
flash attention ON (our attention follows llama.cpp's CPU flash-attention path), K/V cache f16
(the default), the prompt in one batch. F32: logits of every prompt position (`logits_all`).
Greedy: the prompt with logits for its last token only, then one token per call.
"""

import argparse
import ctypes
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

import gguf
import llama_cpp

VOCAB_KEEP = 1000
MARGIN_MIN = 0.05
GREEDY_DISTINCT_MIN = 16
SEED_TRIES = 8
N_GREEDY = 32
N_CTX_REF = 256
THREADS = 2

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llama_ftype values (llama.h)
FTYPE_Q8_0 = 7
FTYPE_Q4_K_M = 15


@dataclass
class Vocab:
    pre: str
    tokens: list
    types: list
    merges: list
    bos: int
    eos: int
    add_bos: bool
    template: str


@dataclass
class Spec:
    """One random model and the files made from it."""

    stem: str
    arch: str
    family: str  # "llama3" or "qwen"
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int | None  # None: no key_length key (n_embd / n_head)
    seed: int
    n_layer: int = 2
    ctx_train: int = 4096
    rope_base: float = 10000.0
    rope_freqs: bool = False
    linear_factor: float | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tied: bool = True
    # (file stem, weights) of each file to keep; "F32" means the unquantized model itself.
    outputs: list = field(default_factory=list)


SPECS = [
    Spec("llama", "llama", "llama3", 64, 128, 4, 2, 32, seed=101, rope_base=500000.0,
         rope_freqs=True, outputs=[("llama-f32", "F32"), ("tiny-llama", "Q8_0")]),
    Spec("llama-linear", "llama", "llama3", 32, 64, 2, 1, None, seed=202,
         linear_factor=4.0, outputs=[("llama-linear-f32", "F32"), ("llama-linear-q8_0", "Q8_0")]),
    Spec("qwen2", "qwen2", "qwen", 32, 64, 2, 1, None, seed=303, rope_base=1000000.0,
         qkv_bias=True, outputs=[("qwen2-f32", "F32"), ("qwen2-q8_0", "Q8_0")]),
    Spec("qwen3", "qwen3", "qwen", 32, 64, 4, 2, 16, seed=404, rope_base=1000000.0,
         qk_norm=True, tied=False, outputs=[("qwen3-f32", "F32"), ("qwen3-q8_0", "Q8_0")]),
    Spec("llama-256", "llama", "llama3", 256, 256, 2, 1, 64, seed=505, rope_base=500000.0,
         rope_freqs=True, outputs=[("llama-q4_k", "Q4_K_M")]),
    Spec("qwen2-256", "qwen2", "qwen", 256, 256, 4, 1, None, seed=606, rope_base=1000000.0,
         qkv_bias=True, outputs=[("qwen2-q4_k", "Q4_K_M")]),
    Spec("qwen3-256", "qwen3", "qwen", 256, 256, 4, 2, 32, seed=707, rope_base=1000000.0,
         qk_norm=True, outputs=[("qwen3-q4_k", "Q4_K_M")]),
]

# The committed fixtures must stay under this many bytes in total.
FIXTURE_BYTES_MAX = 5_000_000


def field_value(reader, key):
    return reader.fields[key].contents()


def bytes_to_unicode():
    """GPT-2's byte-to-character map: the byte-level BPE alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def truncated_vocab(path, specials, eos, template, add_bos):
    r = gguf.GGUFReader(path)
    tokens = field_value(r, "tokenizer.ggml.tokens")
    types = field_value(r, "tokenizer.ggml.token_type")
    merges = field_value(r, "tokenizer.ggml.merges")
    kept = list(tokens[:VOCAB_KEEP])
    assert all(t == gguf.TokenType.NORMAL for t in types[:VOCAB_KEEP]), "a special token among the kept ones"
    keep = set(kept)
    missing = [c for c in bytes_to_unicode() if c not in keep]
    assert not missing, f"byte tokens missing from the first {VOCAB_KEEP}: {missing}"
    kept_merges = []
    for m in merges:
        a, b = m.split(" ")
        if a in keep and b in keep and a + b in keep:
            kept_merges.append(m)
    for s in specials:
        assert s in tokens, s
    ids = {s: VOCAB_KEEP + i for i, s in enumerate(specials)}
    return Vocab(
        pre=field_value(r, "tokenizer.ggml.pre"),
        tokens=kept + specials,
        types=[int(gguf.TokenType.NORMAL)] * VOCAB_KEEP + [int(gguf.TokenType.CONTROL)] * len(specials),
        merges=kept_merges,
        bos=ids[specials[0]],
        eos=ids[eos],
        add_bos=add_bos,
        template=template,
    )


def llama31_rope_factors(n_rot, base):
    """Llama 3.1's frequency divisors (factor 8, low/high frequency factors 1 and 4), with the
    original context shrunk from 8192 to 64 so the smooth part of the ramp falls on dimensions
    that turn noticeably within the fixtures' short prompts."""
    factor, low, high, old_ctx = 8.0, 1.0, 4.0, 64.0
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, n_rot, 2):
        freq = 1.0 / (base ** (i / n_rot))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_model(spec, vocab, seed, path):
    rng = np.random.default_rng(seed)
    d, ff = spec.n_embd, spec.n_ff
    hd = spec.head_dim if spec.head_dim is not None else d // spec.n_head
    n_vocab = len(vocab.tokens)

    def mat(n_out, n_in, gain=1.0):
        # numpy [n_out, n_in] is GGUF [n_in, n_out]: a row per output.
        return (rng.standard_normal((n_out, n_in)) * gain / math.sqrt(n_in)).astype(np.float32)

    def norm(n, centre=1.0, spread=0.1):
        return (centre + spread * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(path, spec.arch)
    w.add_name(f"ryzanstein fixture {spec.stem}")
    w.add_context_length(spec.ctx_train)
    w.add_embedding_length(d)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    if spec.head_dim is not None:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(1e-6 if spec.family == "qwen" else 1e-5)
    w.add_rope_freq_base(spec.rope_base)
    if spec.linear_factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec.linear_factor)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_add_bos_token(vocab.add_bos)
    w.add_chat_template(vocab.template)

    w.add_tensor("token_embd.weight", (0.05 * rng.standard_normal((n_vocab, d))).astype(np.float32))
    if not spec.tied:
        w.add_tensor("output.weight", (0.05 * rng.standard_normal((n_vocab, d))).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(d, centre=30.0, spread=3.0))
    if spec.rope_freqs:
        w.add_tensor("rope_freqs.weight", llama31_rope_factors(hd, spec.rope_base))
    for il in range(spec.n_layer):
        b = f"blk.{il}."
        w.add_tensor(b + "attn_norm.weight", norm(d))
        w.add_tensor(b + "attn_q.weight", mat(spec.n_head * hd, d, 2.0))
        w.add_tensor(b + "attn_k.weight", mat(spec.n_head_kv * hd, d, 2.0))
        w.add_tensor(b + "attn_v.weight", mat(spec.n_head_kv * hd, d))
        if spec.qkv_bias:
            w.add_tensor(b + "attn_q.bias", (0.5 * rng.standard_normal(spec.n_head * hd)).astype(np.float32))
            w.add_tensor(b + "attn_k.bias", (0.5 * rng.standard_normal(spec.n_head_kv * hd)).astype(np.float32))
            w.add_tensor(b + "attn_v.bias", (0.5 * rng.standard_normal(spec.n_head_kv * hd)).astype(np.float32))
        if spec.qk_norm:
            w.add_tensor(b + "attn_q_norm.weight", norm(hd))
            w.add_tensor(b + "attn_k_norm.weight", norm(hd))
        w.add_tensor(b + "attn_output.weight", mat(d, spec.n_head * hd))
        w.add_tensor(b + "ffn_norm.weight", norm(d))
        w.add_tensor(b + "ffn_gate.weight", mat(ff, d, 2.0))
        w.add_tensor(b + "ffn_up.weight", mat(ff, d))
        w.add_tensor(b + "ffn_down.weight", mat(d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = THREADS
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize({src}) failed: {rc}"


def load(path, logits_all):
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=N_CTX_REF,
        n_batch=N_CTX_REF,
        n_ubatch=N_CTX_REF,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=logits_all,
        flash_attn=True,
        seed=0,
        verbose=False,
    )


def reference_logits(path, prompt):
    llm = load(path, logits_all=True)
    llm.eval(prompt)
    out = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    llm.close()
    return out


def reference_greedy(path, prompt, n):
    llm = load(path, logits_all=False)
    n_vocab = llm.n_vocab()
    ids, margins = [], []
    llm.eval(prompt)
    for step in range(n):
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()
        top = np.argsort(logits)[::-1][:2]
        ids.append(int(top[0]))
        margins.append(float(logits[top[0]] - logits[top[1]]))
        if step + 1 < n:
            llm.eval([ids[-1]])
    llm.close()
    return ids, margins


def prompt_for(vocab, seed, n):
    rng = np.random.default_rng(seed + 1_000_000)
    body = [int(t) for t in rng.integers(0, VOCAB_KEEP, n - 1)]
    return [vocab.bos] + body


def fl(x):
    """A float32 in its shortest round-trip decimal form (JSON number)."""
    return float(str(np.float32(x)))


def build(spec, vocab, out_dir, tmp):
    quant_outputs = [(stem, wt) for stem, wt in spec.outputs if wt != "F32"]
    for attempt in range(SEED_TRIES):
        seed = spec.seed + attempt
        f32_path = os.path.join(tmp, f"{spec.stem}-f32.gguf")
        write_model(spec, vocab, seed, f32_path)
        results = []
        ok = True
        for stem, wt in quant_outputs:
            qpath = os.path.join(tmp, f"{stem}.gguf")
            quantize(f32_path, qpath, FTYPE_Q8_0 if wt == "Q8_0" else FTYPE_Q4_K_M)
            prompt = prompt_for(vocab, seed, 8)
            ids, margins = reference_greedy(qpath, prompt, N_GREEDY)
            print(f"  {stem} seed {seed}: greedy {ids} min margin {min(margins):.3f}", file=sys.stderr)
            if min(margins) < MARGIN_MIN or len(set(ids)) < GREEDY_DISTINCT_MIN:
                ok = False
                break
            results.append((stem, wt, qpath, prompt, ids, margins))
        if ok:
            break
    else:
        sys.exit(f"{spec.stem}: no seed in {SEED_TRIES} gives greedy margins of {MARGIN_MIN}")

    common = {
        "arch": spec.arch,
        "seed": seed,
        "reference": f"llama-cpp-python {llama_cpp.__version__}: flash attention on, f16 K/V cache, "
        f"n_ctx {N_CTX_REF}, {THREADS} threads, the prompt in one batch",
    }
    for stem, wt in spec.outputs:
        if wt != "F32":
            continue
        prompt = prompt_for(vocab, seed, 8)
        logits = reference_logits(f32_path, prompt)
        os.replace(f32_path, os.path.join(out_dir, f"{stem}.gguf"))
        doc = dict(common, file=f"{stem}.gguf", weights="F32", prompt=prompt,
                   logits=[[fl(v) for v in row] for row in logits])
        write_json(os.path.join(out_dir, f"{stem}.json"), doc)
        print(f"  {stem}: logits {logits.shape}, spread {logits.std():.2f}", file=sys.stderr)
    for stem, wt, qpath, prompt, ids, margins in results:
        os.replace(qpath, os.path.join(out_dir, f"{stem}.gguf"))
        doc = dict(common, file=f"{stem}.gguf", weights=wt, prompt=prompt, greedy=ids,
                   top2_margin=[round(m, 4) for m in margins])
        write_json(os.path.join(out_dir, f"{stem}.json"), doc)


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-dir", required=True, help="llama.cpp's models/ directory (ggml-vocab-*.gguf)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", help="build only the specs whose stem starts with this")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    vocabs = {
        "llama3": truncated_vocab(os.path.join(a.vocab_dir, "ggml-vocab-llama-bpe.gguf"),
                                  LLAMA3_SPECIALS, "<|eot_id|>", LLAMA3_TEMPLATE, True),
        "qwen": truncated_vocab(os.path.join(a.vocab_dir, "ggml-vocab-qwen2.gguf"),
                                QWEN_SPECIALS, "<|im_end|>", CHATML_TEMPLATE, False),
    }
    for v in vocabs.values():
        print(f"vocab {v.pre}: {len(v.tokens)} tokens, {len(v.merges)} merges", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SPECS:
            if a.only and not spec.stem.startswith(a.only):
                continue
            print(f"{spec.stem}:", file=sys.stderr)
            build(spec, vocabs[spec.family], a.out, tmp)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"fixtures: {total} bytes", file=sys.stderr)
    assert total < FIXTURE_BYTES_MAX, f"fixtures are {total} bytes, over {FIXTURE_BYTES_MAX}"


if __name__ == "__main__":
    main()
