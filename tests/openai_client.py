"""The official `openai` Python package against a running Ryzanstein server.

Run by tests/server_binary.rs (scripts/test.sh installs the package into the cache):
    python3 tests/openai_client.py --base-url http://127.0.0.1:PORT/v1 --model ID --api-key KEY
Exits non-zero with a message on the first mismatch; prints one "ok" line at the end.
"""

import argparse
import sys

from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def completions(client, model):
    args = dict(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
    whole = client.completions.create(**args)
    c = whole.choices[0]
    check(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason}")
    check(whole.usage.completion_tokens <= 6, f"usage {whole.usage}")
    check(whole.id.startswith("cmpl-"), f"id {whole.id}")
    chunks = list(client.completions.create(**args, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(text == c.text, f"streamed {text!r} != whole {c.text!r}")
    check(chunks[-1].usage is not None, "usage chunk last")
    check(chunks[-1].usage.completion_tokens == whole.usage.completion_tokens,
          f"stream usage {chunks[-1].usage} vs {whole.usage}")
    return "completions"


def chat(client, model):
    args = dict(model=model, messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**args, logprobs=True, top_logprobs=2)
    m = whole.choices[0].message
    check(m.role == "assistant", f"role {m.role}")
    check(whole.choices[0].logprobs.content[0].top_logprobs, "top_logprobs")
    chunks = list(client.chat.completions.create(**args, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(text == m.content, f"streamed {text!r} != whole {m.content!r}")
    return "chat"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default="none")
    p.add_argument("--skip-chat", action="store_true")
    a = p.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)
    ids = [m.id for m in client.models.list().data]
    check(a.model in ids, f"{a.model} not in {ids}")
    done = ["models", completions(client, a.model)]
    if not a.skip_chat:
        done.append(chat(client, a.model))
    print("openai client ok: " + ", ".join(done))


if __name__ == "__main__":
    main()
