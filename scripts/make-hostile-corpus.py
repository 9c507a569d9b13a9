#!/usr/bin/env python3
"""Writes the hostile-input corpus: tests/data/hostile/*.http and tests/data/hostile/expect.tsv.

Each .http file holds the raw bytes a client sends on one fresh TCP connection (one request,
or several pipelined); expect.tsv gives, per file, the statuses of the answers in order and
what the case is about. tests/hostile.rs replays every file against the real server on the
tiny Llama fixture (default limits, --n-ctx 1024) and checks each answer. See
tests/data/hostile/README.md.

    scripts/make-hostile-corpus.py            # rewrites the corpus in place

It also writes fuzz/seeds/request/: the body of every case addressed to a route with a body,
as seeds of the fuzz target `request`. The output depends only on this script: same script,
same bytes.
"""

import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "hostile")
# Seeds of the fuzz target `request` (fuzz/fuzz_targets/request.rs): the route's index in
# `api::request::BODY_ROUTES` as the first byte, then the body.
SEEDS = os.path.join(ROOT, "fuzz", "seeds", "request")
SEED_ROUTES = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]

# The tiny Llama fixture's special tokens (tests/data/fixtures/README.md).
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
N_VOCAB = 1005
BODY_BYTES_MAX = 1 << 20
HEAD_BYTES_MAX = 32 * 1024
HEADERS_MAX = 100

cases = []  # (name, bytes, statuses, description)


def add(name, raw, statuses, why):
    if isinstance(statuses, int):
        statuses = [statuses]
    assert "\t" not in why and "\n" not in why, why
    cases.append((name, raw, statuses, why))


def http(method, path, body=b"", headers=None, version="HTTP/1.1", content_type="application/json",
         length=True):
    """One request's raw bytes. `headers` are extra lines (bytes or str)."""
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} {version}".encode(), b"Host: hostile"]
    if content_type is not None and (body or method == "POST"):
        lines.append(b"Content-Type: " + content_type.encode())
    if length and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}".encode())
    for h in headers or []:
        lines.append(h.encode() if isinstance(h, str) else h)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(path, obj_or_bytes, **kw):
    if isinstance(obj_or_bytes, (dict, list)):
        body = json.dumps(obj_or_bytes, ensure_ascii=False).encode()
    elif isinstance(obj_or_bytes, str):
        body = obj_or_bytes.encode()
    else:
        body = obj_or_bytes
    return http("POST", path, body, **kw)


def completion(**fields):
    body = {"prompt": "hello", "max_tokens": 2}
    body.update(fields)
    return body


def chat(**fields):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body.update(fields)
    return body


ROUTES = {
    "cmpl": "/v1/completions",
    "chat": "/v1/chat/completions",
    "tok": "/tokenize",
    "detok": "/detokenize",
}


def broken_json():
    bodies = [
        ("empty", b""),
        ("open-brace", b"{"),
        ("close-brace", b"}"),
        ("truncated-value", b'{"prompt":'),
        ("truncated-array", b'[1,2'),
        ("bare-word", b"nul"),
        ("single-quotes", b"{'prompt': 'x'}"),
        ("trailing-comma", b'{"prompt":"x",}'),
        ("missing-colon", b'{"prompt" "x"}'),
        ("trailing-garbage", b'{"prompt":"x"} xyz'),
        ("nul-byte", b"\x00"),
        ("utf8-bom", b'\xef\xbb\xbf{"prompt":"x"}'),
        ("top-level-array", b"[]"),
        ("top-level-string", b'"prompt"'),
        ("top-level-number", b"1"),
        ("top-level-null", b"null"),
        ("nan-literal", b'{"prompt":"x","temperature":NaN}'),
        ("infinity-literal", b'{"prompt":"x","temperature":Infinity}'),
        ("number-out-of-range", b'{"prompt":"x","temperature":1e400}'),
        ("nested-arrays-1000", b'{"prompt":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("nested-objects-10k", b'{"a":' * 10000 + b"1" + b"}" * 10000),
        ("unescaped-control-char", b'{"prompt":"a\x01b"}'),
        ("comment", b'{"prompt":"x" /* hi */}'),
        ("form-encoded", b"prompt=hello&max_tokens=2"),
    ]
    for route_name, path in ROUTES.items():
        for name, body in bodies:
            if route_name in ("tok", "detok") and name in ("nan-literal", "infinity-literal",
                                                           "comment", "nested-objects-10k"):
                continue
            add(f"json-{route_name}-{name}", post(path, body), 400,
                f"broken JSON ({name}) to {path}")


def wrong_types():
    cmpl = "/v1/completions"
    bad = [
        ("prompt-number", dict(prompt=1)),
        ("prompt-bool", dict(prompt=True)),
        ("prompt-object", dict(prompt={})),
        ("prompt-bool-array", dict(prompt=[True])),
        ("prompt-float-ids", dict(prompt=[1.5])),
        ("prompt-negative-id", dict(prompt=[-1])),
        ("prompt-nested-negative-id", dict(prompt=[[-1]])),
        ("prompt-mixed-array", dict(prompt=["a", 1])),
        ("prompt-nested-mixed", dict(prompt=[[1, "a"]])),
        ("prompt-null-element", dict(prompt=[None])),
        ("prompt-id-over-u32", dict(prompt=[4294967296])),
        ("prompt-id-outside-vocab", dict(prompt=[1, 2, N_VOCAB])),
        ("prompt-empty-string", dict(prompt="")),
        ("prompt-empty-array", dict(prompt=[])),
        ("prompt-empty-inner-array", dict(prompt=[[]])),
        ("prompt-missing", {"max_tokens": 2}),
        ("max-tokens-string", dict(max_tokens="5")),
        ("max-tokens-negative", dict(max_tokens=-1)),
        ("max-tokens-float", dict(max_tokens=1.5)),
        ("max-tokens-exponent", dict(max_tokens=1e2)),
        ("max-tokens-bool", dict(max_tokens=True)),
        ("max-tokens-huge", dict(max_tokens=10**30)),
        ("max-tokens-u64-max", dict(max_tokens=2**64 - 1)),
        ("max-tokens-zero", dict(max_tokens=0)),
        ("max-tokens-over-cap", dict(max_tokens=4097)),
        ("temperature-string", dict(temperature="hot")),
        ("temperature-negative", dict(temperature=-0.1)),
        ("temperature-too-high", dict(temperature=2.1)),
        ("temperature-huge", dict(temperature=1e300)),
        ("top-p-zero", dict(top_p=0)),
        ("top-p-too-high", dict(top_p=1.5)),
        ("top-p-negative", dict(top_p=-1)),
        ("top-k-minus-two", dict(top_k=-2)),
        ("top-k-float", dict(top_k=1.5)),
        ("top-k-string", dict(top_k="x")),
        ("min-p-too-high", dict(min_p=2)),
        ("min-p-negative", dict(min_p=-0.1)),
        ("repetition-penalty-zero", dict(repetition_penalty=0)),
        ("repetition-penalty-negative", dict(repetition_penalty=-1)),
        ("repetition-penalty-huge", dict(repetition_penalty=11)),
        ("presence-penalty-too-high", dict(presence_penalty=3)),
        ("frequency-penalty-too-low", dict(frequency_penalty=-3)),
        ("n-zero", dict(n=0)),
        ("n-negative", dict(n=-1)),
        ("n-over-cap", dict(n=9)),
        ("n-string", dict(n="2")),
        ("n-float", dict(n=1.5)),
        ("choices-over-cap", dict(prompt=["a"] * 5, n=8)),
        ("stop-number", dict(stop=1)),
        ("stop-number-array", dict(stop=[1])),
        ("stop-empty-string", dict(stop=[""])),
        ("stop-too-many", dict(stop=[str(i) for i in range(17)])),
        ("stop-too-long", dict(stop="x" * 257)),
        ("stop-object", dict(stop={})),
        ("seed-string", dict(seed="x")),
        ("seed-float", dict(seed=1.5)),
        ("seed-over-u64", dict(seed=2**64)),
        ("logit-bias-array", dict(logit_bias=[])),
        ("logit-bias-string", dict(logit_bias="x")),
        ("logit-bias-key-not-id", dict(logit_bias={"a": 1})),
        ("logit-bias-negative-key", dict(logit_bias={"-1": 1})),
        ("logit-bias-value-string", dict(logit_bias={"1": "x"})),
        ("logit-bias-too-high", dict(logit_bias={"1": 101})),
        ("logit-bias-too-low", dict(logit_bias={"1": -101})),
        ("logit-bias-key-over-u32", dict(logit_bias={"99999999999": 1})),
        ("logit-bias-outside-vocab", dict(logit_bias={str(N_VOCAB): 1})),
        ("logit-bias-too-many", dict(logit_bias={str(i): 1 for i in range(301)})),
        ("logprobs-too-many", dict(logprobs=21)),
        ("logprobs-negative", dict(logprobs=-1)),
        ("logprobs-string", dict(logprobs="x")),
        ("echo-true", dict(echo=True)),
        ("echo-string", dict(echo="yes")),
        ("stream-string", dict(stream="yes")),
        ("stream-options-string", dict(stream_options="x")),
        ("stream-options-usage-string", dict(stream_options={"include_usage": "x"})),
        ("user-number", dict(user=5)),
        ("model-number", dict(model=5)),
        ("model-array", dict(model=["tiny-llama"])),
        ("ignore-eos-string", dict(ignore_eos="x")),
        ("stream-with-bad-field", dict(stream=True, temperature=-1)),
    ]
    for name, fields in bad:
        body = fields if name == "prompt-missing" else completion(**fields)
        add(f"type-cmpl-{name}", post(cmpl, body), 400, f"completions: {name.replace('-', ' ')}")


def accepted_oddities():
    """Valid but unusual requests: each must be served (200)."""
    cmpl = "/v1/completions"
    ok = [
        ("seed-negative", completion(seed=-1)),
        ("seed-u64-max", completion(seed=2**64 - 1)),
        ("top-k-minus-one", completion(top_k=-1)),
        ("unknown-fields", completion(frobnicate={"a": [1, {"b": None}]}, tools=[])),
        ("null-fields", completion(temperature=None, n=None, stop=None, logit_bias=None)),
        ("duplicate-keys", b'{"prompt":"a","prompt":"hello","max_tokens":2}'),
        ("max-tokens-one", completion(max_tokens=1)),
        ("n-max", completion(n=8)),
        ("choices-at-cap", completion(prompt=["a", "b", "c", "d"], n=8, max_tokens=1)),
        ("logit-bias-edge", completion(logit_bias={"0": -100, "1004": 100})),
        ("logit-bias-at-cap", completion(logit_bias={str(i): 1 for i in range(300)})),
        ("stop-at-caps", completion(stop=["x" * 256] + [str(i) for i in range(15)])),
        ("prompt-nul-escape", completion(prompt="a\u0000b")),
        ("prompt-surrogate-pair", b'{"prompt":"\\ud83d\\ude00 smile","max_tokens":2}'),
        ("prompt-emoji-rtl-combining", completion(prompt="\U0001F600 \u05e9\u05dc\u05d5\u05dd e\u0301")),
        ("prompt-whitespace", completion(prompt=" ")),
        ("prompt-newlines", completion(prompt="\n" * 1000)),
        ("prompt-only-special-tokens", completion(prompt="".join(SPECIALS))),
        ("prompt-many-eot", completion(prompt="<|eot_id|>" * 300)),
        ("prompt-half-special", completion(prompt="<|eot_id|<|begin_of_text>|<|")),
        ("prompt-token-ids-edge", completion(prompt=[0, N_VOCAB - 1])),
        ("prompt-array-of-id-arrays", completion(prompt=[[1000, 5], [1000, 6]])),
        ("prompt-at-context", completion(prompt=[5] * 1023, max_tokens=1)),
        ("stream-true", completion(stream=True, stream_options={"include_usage": True})),
        ("model-by-id", completion(model="tiny-llama")),
        ("model-null", completion(model=None)),
        ("logprobs-max", completion(logprobs=20)),
        ("query-string", None),
    ]
    for name, body in ok:
        if name == "query-string":
            add("ok-cmpl-query-string", post(cmpl + "?x=1&y=%ff", completion()), 200,
                "a query string is ignored")
            continue
        add(f"ok-cmpl-{name}", post(cmpl, body), 200, f"accepted: {name.replace('-', ' ')}")


def utf8_and_surrogates():
    cmpl, tok = "/v1/completions", "/tokenize"
    bad = [
        ("invalid-byte-ff", b'{"prompt":"\xff\xfe","max_tokens":2}'),
        ("overlong-slash", b'{"prompt":"\xc0\xaf","max_tokens":2}'),
        ("cesu8-surrogate", b'{"prompt":"\xed\xa0\x80","max_tokens":2}'),
        ("truncated-sequence", b'{"prompt":"\xe2\x82","max_tokens":2}'),
        ("invalid-outside-string", b'{"prompt":"x"\xff}'),
        ("lone-high-surrogate", b'{"prompt":"\\ud800","max_tokens":2}'),
        ("lone-low-surrogate", b'{"prompt":"\\udc00","max_tokens":2}'),
        ("reversed-surrogates", b'{"prompt":"\\udc00\\ud800","max_tokens":2}'),
        ("bad-unicode-escape", b'{"prompt":"\\u12G4","max_tokens":2}'),
        ("code-point-over-max", b'{"prompt":"\xf4\x90\x80\x80","max_tokens":2}'),
    ]
    for name, body in bad:
        add(f"utf8-cmpl-{name}", post(cmpl, body), 400, f"completions: {name.replace('-', ' ')}")
        add(f"utf8-tok-{name}", post(tok, body.replace(b',"max_tokens":2', b"")), 400,
            f"tokenize: {name.replace('-', ' ')}")
    add("utf8-chat-lone-surrogate",
        post("/v1/chat/completions",
             b'{"messages":[{"role":"user","content":"\\ud800"}],"max_tokens":2}'),
        400, "chat: a lone surrogate in a message")
    add("utf8-stop-invalid",
        post(cmpl, b'{"prompt":"x","stop":["\xff"],"max_tokens":2}'), 400,
        "an invalid UTF-8 stop string")


def chat_cases():
    path = "/v1/chat/completions"
    bad = [
        ("messages-missing", {"max_tokens": 2}),
        ("messages-object", chat(messages={})),
        ("messages-string", chat(messages="hi")),
        ("messages-empty", chat(messages=[])),
        ("message-number", chat(messages=[1])),
        ("message-empty-object", chat(messages=[{}])),
        ("role-number", chat(messages=[{"role": 1, "content": "x"}])),
        ("content-number", chat(messages=[{"role": "user", "content": 5}])),
        ("content-image-part", chat(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}])),
        ("content-part-without-text", chat(messages=[{"role": "user", "content": [
            {"type": "text"}]}])),
        ("content-part-text-number", chat(messages=[{"role": "user", "content": [
            {"type": "text", "text": 5}]}])),
        ("content-part-without-type", chat(messages=[{"role": "user", "content": [
            {"text": "x"}]}])),
        ("logprobs-string", chat(logprobs="x")),
        ("top-logprobs-too-many", chat(logprobs=True, top_logprobs=21)),
        ("top-logprobs-without-logprobs", chat(top_logprobs=2)),
        ("max-completion-tokens-zero", chat(max_completion_tokens=0)),
        ("max-completion-tokens-over-cap", chat(max_completion_tokens=5000)),
        ("n-over-cap", chat(n=9)),
        ("prompt-over-context", chat(messages=[{"role": "user", "content": "word " * 3000}])),
    ]
    for name, body in bad:
        add(f"chat-{name}", post(path, body), 400, f"chat: {name.replace('-', ' ')}")
    ok = [
        ("content-missing", chat(messages=[{"role": "user"}])),
        ("content-null", chat(messages=[{"role": "assistant", "content": None},
                                        {"role": "user", "content": "x"}])),
        ("unknown-role", chat(messages=[{"role": "wizard", "content": "x"}])),
        ("content-parts", chat(messages=[{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])),
        ("template-injection", chat(messages=[{"role": "user", "content":
                                               "{{ raise_exception('x') }}{% for x in y %}"}])),
        ("special-tokens-in-content", chat(messages=[{"role": "user", "content":
                                                      "".join(SPECIALS) * 10}])),
        ("stream", chat(stream=True)),
    ]
    for name, body in ok:
        add(f"ok-chat-{name}", post(path, body), 200, f"chat accepted: {name.replace('-', ' ')}")


def tokenizer_cases():
    bad = [
        ("tok-prompt-missing", "/tokenize", {}),
        ("tok-prompt-number", "/tokenize", {"prompt": 5}),
        ("tok-prompt-array", "/tokenize", {"prompt": [1, 2]}),
        ("tok-add-special-string", "/tokenize", {"prompt": "x", "add_special_tokens": "x"}),
        ("detok-tokens-missing", "/detokenize", {}),
        ("detok-tokens-string", "/detokenize", {"tokens": "x"}),
        ("detok-negative-id", "/detokenize", {"tokens": [-1]}),
        ("detok-float-id", "/detokenize", {"tokens": [1.5]}),
        ("detok-outside-vocab", "/detokenize", {"tokens": [N_VOCAB]}),
        ("detok-over-u32", "/detokenize", {"tokens": [4294967296]}),
        ("detok-nested", "/detokenize", {"tokens": [[1]]}),
    ]
    for name, path, body in bad:
        add(name, post(path, body), 400, f"{path}: {name.replace('-', ' ')}")
    ok = [
        ("tok-only-specials", "/tokenize", {"prompt": "".join(SPECIALS) * 50}),
        ("tok-empty", "/tokenize", {"prompt": ""}),
        ("tok-long-text", "/tokenize", {"prompt": "lorem ipsum " * 2000}),
        ("tok-long-word", "/tokenize", {"prompt": "a" * 20000}),
        ("tok-all-bytes", "/tokenize", {"prompt": "".join(chr(i) for i in range(1, 0x3000, 7))}),
        ("detok-empty", "/detokenize", {"tokens": []}),
        ("detok-specials-and-bytes", "/detokenize", {"tokens": list(range(0, N_VOCAB, 3))}),
        ("detok-many", "/detokenize", {"tokens": [5] * 5000}),
    ]
    for name, path, body in ok:
        add(f"ok-{name}", post(path, body), 200, f"{path} accepted: {name.replace('-', ' ')}")


def big_inputs():
    cmpl = "/v1/completions"
    add("big-prompt-text-over-context", post(cmpl, completion(prompt="word " * 60000)), 400,
        "a 300 KB text prompt: over the context (context_length_exceeded)")
    add("big-prompt-ids-over-context", post(cmpl, completion(prompt=[5] * 1024)), 400,
        "1024 token ids: over the context of 1024 minus one")
    add("big-prompt-array-many", post(cmpl, completion(prompt=["a"] * 33)), 400,
        "33 prompts: over choices_max")
    head = http("POST", cmpl, b"", content_type="application/json", length=False)
    claim = head.replace(b"\r\n\r\n", f"\r\nContent-Length: {BODY_BYTES_MAX + 1}\r\n\r\n".encode(), 1)
    add("big-body-declared", claim + b'{"prompt":"x"', 413,
        "Content-Length over body_bytes_max: refused before reading (the rest never comes)")
    claim = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 100000000000000000000\r\n\r\n", 1)
    add("big-body-length-over-u64", claim + b"{}\r\n\r\n", [400, 400],
        "a Content-Length over u64 is ignored by tiny_http: an empty body, then the body is "
        "read as a request line (400, connection closed)")
    claim = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 18446744073709551615\r\n\r\n", 1)
    add("big-body-length-u64-max", claim + b"{}", 413, "Content-Length u64::MAX")


def chunked(body, chunk=7, ext=b""):
    out = b""
    for i in range(0, len(body), chunk):
        part = body[i:i + chunk]
        out += f"{len(part):x}".encode() + ext + b"\r\n" + part + b"\r\n"
    return out + b"0\r\n\r\n"


def http_layer():
    cmpl = "/v1/completions"
    good = json.dumps(completion()).encode()
    te = ["Transfer-Encoding: chunked"]
    add("chunked-valid", http("POST", cmpl, chunked(good), te, length=False), 200,
        "a chunked request body")
    add("chunked-with-extension", http("POST", cmpl, chunked(good, ext=b";name=value"), te,
                                       length=False), 200, "chunk extensions are ignored")
    add("chunked-bad-size", http("POST", cmpl, b"zz\r\n" + good + b"\r\n0\r\n\r\n", te,
                                 length=False), 400,
        "a chunk size that is not hex: 400 from the connection's thread (it reads bodies), "
        "then close: the framing is lost")
    add("chunked-truncated", http("POST", cmpl, b"ff\r\n" + good, te, length=False), 200,
        "a chunk shorter than its size, then the client stops sending: the decoder ends the "
        "body there and the JSON in it is whole")
    add("chunked-and-length", http("POST", cmpl, chunked(good), te + ["Content-Length: 5"],
                                   length=False), 200,
        "Transfer-Encoding and Content-Length: the chunked framing wins")
    add("chunked-bad-json", http("POST", cmpl, chunked(b'{"prompt":'), te, length=False), 400,
        "a chunked body that is not JSON")
    add("expect-100-continue", http("POST", cmpl, good, ["Expect: 100-continue"]), 200,
        "Expect: 100-continue (a 100 Continue comes first)")
    add("expect-unknown", http("POST", cmpl, good, ["Expect: 200-ok"]), 417,
        "an Expect other than 100-continue")
    add("content-type-missing", http("POST", cmpl, good, content_type=None), 200,
        "no Content-Type: the body is read as JSON all the same")
    add("content-type-text", http("POST", cmpl, good, content_type="text/plain"), 200,
        "Content-Type text/plain with a JSON body")
    add("content-type-form", http("POST", cmpl, b"prompt=x",
                                  content_type="application/x-www-form-urlencoded"), 400,
        "a form-encoded body")
    add("content-type-multipart", http("POST", cmpl, b"--b\r\nContent-Disposition: form-data; "
                                       b"name=\"prompt\"\r\n\r\nx\r\n--b--\r\n",
                                       content_type="multipart/form-data; boundary=b"), 400,
        "a multipart body")
    add("content-length-missing", http("POST", cmpl, b"", length=False), 400,
        "POST without a body")
    add("content-length-not-number", http("POST", cmpl, b"", ["Content-Length: abc"],
                                          length=False), 400,
        "Content-Length: abc (ignored: no body)")
    add("content-length-short", http("POST", cmpl, good, length=False) .replace(
        b"\r\n\r\n", b"\r\nContent-Length: 10\r\n\r\n", 1), 400,
        "Content-Length shorter than the body: 400; the rest never ends a line, so no more")
    add("content-length-long", http("POST", cmpl, good, length=False).replace(
        b"\r\n\r\n", f"\r\nContent-Length: {len(good) + 50}\r\n\r\n".encode(), 1), [],
        "Content-Length longer than the body, then the client stops sending: an incomplete "
        "request, closed unanswered")
    add("content-length-negative", http("POST", cmpl, b"", ["Content-Length: -1"],
                                        length=False), 400, "Content-Length: -1")
    add("connection-upgrade", http("POST", cmpl, good, ["Connection: Upgrade",
                                                        "Upgrade: websocket"]), 400,
        "Connection: upgrade is refused (its body would be the raw socket)")
    for v in ["HTTP/1.0"]:
        add("http10-health", http("GET", "/health", version=v), 200, "HTTP/1.0 GET")
        add("http10-completion", http("POST", cmpl, good, version=v), 200, "HTTP/1.0 POST")
        add("http10-stream", http("POST", cmpl, json.dumps(completion(stream=True)).encode(),
                                  version=v), 200, "HTTP/1.0 stream: unframed, then close")
        add("http10-bad-json", http("POST", cmpl, b"{", version=v), 400, "HTTP/1.0 bad JSON")
        add("http10-keep-alive", http("GET", "/health", headers=["Connection: keep-alive"], version=v)
            + http("GET", "/nope", version=v), [200, 404], "HTTP/1.0 keep-alive: two requests")
        add("http10-not-found", http("GET", "/nope", version=v), 404, "HTTP/1.0 unknown path")
    add("http09-request-line", b"GET /health\r\n\r\n", 400, "an HTTP/0.9 request line")
    add("http2-request-line", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505,
        "HTTP/2.0 in an HTTP/1 request line")
    add("http12-request-line", b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n", 400,
        "an unknown HTTP version")
    add("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [505, 400],
        "the HTTP/2 connection preface: 505, then its second line is not a request line")
    add("garbage-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400,
        "a TLS ClientHello-like line")
    add("request-line-method-only", b"GET\r\n\r\n", 400, "a request line without a path")
    add("request-line-extra-spaces", b"GET  /health  HTTP/1.1\r\nHost: x\r\n\r\n", 400,
        "a request line with double spaces")
    add("request-line-lf-only", b"GET /health HTTP/1.1\nHost: x\n\n", [],
        "bare LF line ends: the head never ends, the client stops sending: closed unanswered")
    add("request-line-non-ascii-path", "GET /h\u00e9alth HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        400, "a non-ASCII byte in the path")
    add("header-without-colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400,
        "a header line without a colon")
    add("header-non-ascii", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Name: \xff\xfe\r\n\r\n", 400,
        "a non-ASCII header value")
    add("header-obs-fold", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400,
        "an obsolete folded header line")
    add("header-empty-name", b"GET /health HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400,
        "a header with an empty name")
    add("authorization-junk", http("GET", "/health", headers=["Authorization: Bearer \x01x"]), 200,
        "an Authorization header when no key is set")
    add("many-headers-under-cap", http("GET", "/health", headers=[f"X-H{i}: {i}" for i in range(90)]),
        200, "90 headers: under the cap")
    add("too-many-headers", http("GET", "/health", headers=[f"X-H{i}: {i}" for i in range(HEADERS_MAX + 5)]),
        431, f"{HEADERS_MAX + 5} header lines: over the cap of {HEADERS_MAX}")
    add("oversized-header", http("GET", "/health", headers=["X-Big: " + "a" * (HEAD_BYTES_MAX + 100)]),
        431, "one header of 32 KiB: over the head limit")
    add("oversized-headers-total", http("GET", "/health", headers=[f"X-H{i}: " + "b" * 500 for i in range(70)]),
        431, "70 headers of 500 bytes: over the head limit in total")
    add("oversized-request-line", http("GET", "/health?" + "q" * (HEAD_BYTES_MAX + 100)), 414,
        "a 32 KiB request line")
    add("header-at-limit", http("GET", "/health", headers=["X-Big: " + "a" * (HEAD_BYTES_MAX - 200)]),
        200, "one header just under the head limit")


def routes_and_models():
    cmpl = "/v1/completions"
    for name, model in [("unknown", "gpt-4"), ("path-traversal", "../../etc/passwd"),
                        ("absolute-path", "/etc/passwd"), ("dot-dot-id", "tiny-llama/../x"),
                        ("empty", ""), ("nul", "tiny\u0000llama"), ("long", "m" * 10000),
                        ("gguf-file-name", "tiny-llama.gguf"), ("url", "http://127.0.0.1/x"),
                        ("case", "TINY-LLAMA")]:
        add(f"model-cmpl-{name}", post(cmpl, completion(model=model)), 404,
            f"completions for model id: {name.replace('-', ' ')}")
    add("model-chat-traversal", post("/v1/chat/completions", chat(model="../tiny-llama")), 404,
        "chat for a path-like model id")
    add("model-tok-unknown", post("/tokenize", {"prompt": "x", "model": "nope"}), 404,
        "tokenize for an unknown model")
    for name, path in [("traversal", "/v1/models/../../etc/passwd"),
                       ("encoded-traversal", "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
                       ("unknown", "/v1/models/nope"), ("nul", "/v1/models/%00"),
                       ("events-unknown", "/v1/models/nope/events")]:
        add(f"path-models-{name}", http("GET", path), 404, f"GET {path}")
    add("path-models-load-unknown", http("POST", "/v1/models/nope/load", b"{}"), 404,
        "load an unknown model")
    for name, path in [("trailing-slash", "/v1/completions/"), ("double-slash", "//v1/completions"),
                       ("upper-case", "/V1/COMPLETIONS"), ("absolute-uri", "http://x/v1/completions"),
                       ("unknown", "/v2/completions"), ("dot-segments", "/v1/./completions"),
                       ("star", "*")]:
        add(f"path-{name}", http("POST", path, json.dumps(completion()).encode()), 404,
            f"POST {path}")
    # Not HEAD: its answer has a Content-Length but no body.
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]:
        add(f"method-{method.lower()}-completions", http(method, cmpl), 405,
            f"{method} /v1/completions")
    add("method-post-health", http("POST", "/health", b"{}"), 405, "POST /health")
    add("method-lowercase", http("get", "/health"), 405, "a lower-case method")
    add("method-custom", http("BREW", "/health"), 405, "an unknown method")


def pipelined():
    cmpl = "/v1/completions"
    good = json.dumps(completion()).encode()
    add("pipeline-three", http("GET", "/health") + post("/tokenize", {"prompt": "hi"}) +
        http("GET", "/nope"), [200, 200, 404], "three pipelined requests answered in order")
    add("pipeline-errors-between", post(cmpl, good) + post(cmpl, b"{") + post(cmpl, good) +
        http("GET", "/v1/completions"), [200, 400, 200, 405],
        "errors between good requests keep the order")
    big = json.dumps(completion(prompt="x " * 1000)).encode()
    add("pipeline-large-bodies", post(cmpl, big) + post(cmpl, big), [200, 200],
        "pipelined bodies over tiny_http's 1 KiB eager read")
    add("pipeline-stream-then-get", post(cmpl, json.dumps(completion(stream=True)).encode()) +
        http("GET", "/health"), [200, 200], "a stream then a request on the same connection")
    add("pipeline-chunked-then-get", http("POST", cmpl, chunked(good),
                                          ["Transfer-Encoding: chunked"], length=False) +
        http("GET", "/health"), [200, 200], "a chunked body then a request")
    add("pipeline-close-stops", http("GET", "/health", headers=["Connection: close"]) +
        http("GET", "/health"), [200], "Connection: close: the second request is not read")
    add("pipeline-garbage-after", http("GET", "/health") + b"NOT HTTP\r\n\r\n", [200, 400],
        "a good request, then garbage")
    add("pipeline-ten-health", http("GET", "/health") * 10, [200] * 10, "ten pipelined GETs")


def write_seeds():
    """The first request of each case whose path is a body route: route index, then body."""
    os.makedirs(SEEDS, exist_ok=True)
    for f in os.listdir(SEEDS):
        os.remove(os.path.join(SEEDS, f))
    n = 0
    for i, (name, raw, _, _) in enumerate(cases):
        head, sep, body = raw.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1].split(b"?")[0].decode("latin-1") if len(parts) > 1 else ""
        if not sep or path not in SEED_ROUTES:
            continue
        with open(os.path.join(SEEDS, f"{i:03d}-{name}"), "wb") as f:
            f.write(bytes([SEED_ROUTES.index(path)]) + body)
        n += 1
    print(f"{n} fuzz seeds in {os.path.normpath(SEEDS)}", file=sys.stderr)


def main():
    broken_json()
    wrong_types()
    accepted_oddities()
    utf8_and_surrogates()
    chat_cases()
    tokenizer_cases()
    big_inputs()
    http_layer()
    routes_and_models()
    pipelined()
    names = [c[0] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".http"):
            os.remove(os.path.join(OUT, f))
    lines = ["# file\tstatuses (one per answer, in order)\twhat the case is"]
    for i, (name, raw, statuses, why) in enumerate(cases):
        fname = f"{i:03d}-{name}.http"
        with open(os.path.join(OUT, fname), "wb") as f:
            f.write(raw)
        answers = ",".join(map(str, statuses)) or "none"
        lines.append(f"{fname}\t{answers}\t{why}")
    with open(os.path.join(OUT, "expect.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_seeds()
    total = sum(len(c[1]) for c in cases)
    print(f"{len(cases)} cases, {total} bytes, in {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
