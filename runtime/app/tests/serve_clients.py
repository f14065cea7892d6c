"""Drives `edgellm serve` with the official `openai` and `ollama` Python clients and prints one JSON
object with what each call returned. Used by tests/serve.rs; exits 3 when a client is missing.

usage: serve_clients.py BASE_URL MODEL CHAT_PROMPT RAW_PROMPT N
"""

import json
import sys

try:
    import ollama
    import openai
except ImportError as e:  # the Rust test decides whether that is a skip or a failure
    print(f"missing Python client: {e}", file=sys.stderr)
    sys.exit(3)

base, model, prompt, raw_prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
out = {}

oa = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
messages = [{"role": "user", "content": prompt}]

r = oa.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=n)
out["openai_chat"] = r.choices[0].message.content
out["openai_chat_finish"] = r.choices[0].finish_reason
out["openai_chat_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]

text, finish, usage, roles = "", None, None, 0
for chunk in oa.chat.completions.create(
    model=model,
    messages=messages,
    temperature=0,
    max_tokens=n,
    stream=True,
    stream_options={"include_usage": True},
):
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    for c in chunk.choices:
        if c.delta.role:
            roles += 1
        text += c.delta.content or ""
        finish = c.finish_reason or finish
out["openai_chat_stream"] = text
out["openai_chat_stream_finish"] = finish
out["openai_chat_stream_usage"] = usage
out["openai_chat_stream_roles"] = roles

r = oa.completions.create(model=model, prompt=raw_prompt, temperature=0, max_tokens=n)
out["openai_completion"] = r.choices[0].text
out["openai_completion_usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]

text = ""
for chunk in oa.completions.create(model=model, prompt=raw_prompt, temperature=0, max_tokens=n, stream=True):
    for c in chunk.choices:
        text += c.text
out["openai_completion_stream"] = text

out["openai_models"] = [m.id for m in oa.models.list()]
out["openai_model"] = oa.models.retrieve(model).id
try:
    oa.models.retrieve("no-such-model")
    out["openai_model_unknown"] = "found"
except openai.NotFoundError as e:
    out["openai_model_unknown"] = e.status_code

ol = ollama.Client(host=base, timeout=300)
options = {"temperature": 0, "num_predict": n}

r = ol.generate(model=model, prompt=prompt, options=options, stream=False)
out["ollama_generate"] = r.response
out["ollama_generate_done"] = [r.done, r.done_reason, r.prompt_eval_count, r.eval_count]
out["ollama_generate_durations_positive"] = all(
    (x or 0) > 0 for x in [r.total_duration, r.prompt_eval_duration, r.eval_duration]
) and r.load_duration is not None

text, last = "", None
for part in ol.generate(model=model, prompt=prompt, options=options, stream=True):
    text += part.response
    last = part
out["ollama_generate_stream"] = text
out["ollama_generate_stream_done"] = [last.done, last.done_reason, last.eval_count]

r = ol.generate(model=model, prompt=raw_prompt, options=options, raw=True, stream=False)
out["ollama_generate_raw"] = r.response

r = ol.chat(model=model, messages=messages, options=options, stream=False)
out["ollama_chat"] = r.message.content
out["ollama_chat_role"] = r.message.role

text, last = "", None
for part in ol.chat(model=model, messages=messages, options=options, stream=True):
    text += part.message.content or ""
    last = part
out["ollama_chat_stream"] = text
out["ollama_chat_stream_done"] = [last.done, last.done_reason]

out["ollama_tags"] = [m.model for m in ol.list().models]
shown = ol.show(model)
out["ollama_show"] = [
    shown.details.family,
    shown.modelinfo["general.architecture"],
    shown.modelinfo[f"{shown.details.family}.context_length"],
    bool(shown.template),
]

try:
    ol.generate(model="no-such-model", prompt=prompt, options=options, stream=False)
    out["ollama_unknown_model"] = "accepted"
except ollama.ResponseError as e:
    out["ollama_unknown_model"] = e.status_code

try:
    oa.chat.completions.create(model="no-such-model", messages=messages, max_tokens=1)
    out["openai_unknown_model"] = "accepted"
except openai.NotFoundError as e:
    out["openai_unknown_model"] = e.status_code

print(json.dumps(out))
