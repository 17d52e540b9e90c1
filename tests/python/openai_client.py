"""The official `openai` client against SPLAI's OpenAI-compatible API.

Run by the e2e test `official_openai_python_client_works` with OPENAI_BASE_URL pointing at a
SPLAI gateway (`.../v1`). Prints one JSON object with what the client received; the Rust test
checks it against the model-server double's answers.
"""

import json
import os

from openai import OpenAI

client = OpenAI(max_retries=0, timeout=60)
model = os.environ["SPLAI_TEST_MODEL"]

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello"}],
)
assert chat.object == "chat.completion", chat
assert chat.choices[0].finish_reason == "stop", chat
assert chat.usage is not None and chat.usage.total_tokens > 0, chat

pieces = []
finish = None
usage = None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count one two three"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens > 0, usage

embedding = client.embeddings.create(
    model=os.environ["SPLAI_TEST_EMBEDDING_MODEL"],
    input="embed me",
)
vector = embedding.data[0].embedding

print(
    json.dumps(
        {
            "chat": chat.choices[0].message.content,
            "stream": "".join(pieces),
            "stream_chunks": len(pieces),
            "embedding": vector,
        }
    )
)
