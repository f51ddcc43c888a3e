"""``llamanp serve`` as a client sees it: a real server subprocess on 127.0.0.1, driven with the official
``openai`` package, its answers compared with the library's own calls on the same model."""
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from engine import DEFAULT_MODEL, Llama

KEY = "test-key"
CTX = 2048  # room for a stream long enough to still be running when the tests look


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    """(status, JSON body) of a request to the server, errors included."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start_server(*options: str):
    """A ``llamanp serve`` subprocess with ``options``; yields its port once it answers /health."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port), "--api-key", KEY,
                                "--ctx", str(CTX), *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            if request(port, "/health")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {process.stderr.read().decode()}")
        time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    yield from start_server("--parallel", "2", "--queue", "1")


def openai_client(port: int) -> openai.OpenAI:
    """The official client of the server on ``port``, with its key and no retries (a 503 must show)."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def llm():
    with Llama(DEFAULT_MODEL, n_ctx=CTX, batch_invariant=True) as llm:  # the server's arithmetic
        yield llm


def wait_idle(port: int, slots: int = 2) -> float:
    """Seconds until every slot is idle again (fails after 5)."""
    start = time.monotonic()
    while request(port, "/health")[1]["slots_idle"] != slots:
        assert time.monotonic() - start < 5, "a slot stayed busy"
        time.sleep(0.02)
    return time.monotonic() - start


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL.name]
    assert request(server, "/health", key=None) == (200, {"status": "ok", "slots_idle": 2, "slots_total": 2})


def test_completions(client, llm):
    options = dict(max_tokens=24, temperature=0.8, seed=5, stop=["\n\n"])
    want = llm.create_completion("ROMEO:", **options)
    got = client.completions.create(model="x", prompt="ROMEO:", **options)
    assert got.choices[0].text == want["choices"][0]["text"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    stream = client.completions.create(model="x", prompt="ROMEO:", stream=True, **options)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == want["choices"][0]["text"]
    assert chunks[-1].choices[0].finish_reason == want["choices"][0]["finish_reason"]
    counted = list(client.completions.create(model="x", prompt="ROMEO:", stream=True,
                                             stream_options={"include_usage": True}, **options))
    assert counted[-1].choices == [] and counted[-1].usage.model_dump(exclude_none=True) == want["usage"]
    assert [c.choices[0].text for c in counted[:-1]] == [c.choices[0].text for c in chunks]


def test_chat_completions(client, llm):
    messages = [{"role": "user", "content": "Who art thou?"}]
    want = llm.create_chat_completion(messages, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
    got = client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0)
    assert got.choices[0].message.role == "assistant" and got.choices[0].message.content == want
    chunks = list(client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    counted = list(client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}))
    assert counted[-1].choices == [] and counted[-1].usage.completion_tokens == got.usage.completion_tokens


def test_json_schema_output_parses(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    out = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "JSON"}], max_tokens=150, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    value = json.loads(out.choices[0].message.content)
    assert isinstance(value["ok"], bool) and isinstance(value["n"], int)


def test_embeddings(client, llm):
    texts = ["ROMEO: what light", "JULIET: ay me"]
    got = client.embeddings.create(model="x", input=texts)  # the client asks for base64 and decodes it
    for item, text in zip(got.data, texts):
        np.testing.assert_array_equal(np.array(item.embedding, np.float32), llm.embed(text))
    plain = client.embeddings.create(model="x", input=texts[0], encoding_format="float")
    assert plain.data[0].embedding == llm.embed(texts[0])


def test_errors(client, server):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="x", prompt="ROMEO:", temperature=-0.0, top_p=7)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[{"role": "user"}])
    with pytest.raises(openai.BadRequestError):  # longer than the context
        client.completions.create(model="x", prompt="ROMEO: " * 2000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)  # a body announced as 2 MiB
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Authorization", f"Bearer {KEY}")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["message"]
    connection.close()
    status, body = request(server, "/v1/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert request(server, "/v1/completions", b'{"prompt": "a", "frobnicate": 1}')[0] == 400
    wait_idle(server)


def test_disconnect_frees_the_slot(client, server):
    stream = client.completions.create(model="x", prompt="ROMEO:", max_tokens=CTX - 8, stream=True)
    next(iter(stream))
    assert request(server, "/health")[1]["slots_idle"] == 1
    stream.close()  # the rest (seconds of generation) is dropped at once
    assert wait_idle(server) < 1


def test_flood_gets_503_and_the_server_stays_up(client, server):
    """Two slots and a queue of one: of 8 requests at once at least one is refused, the others complete."""
    outcomes = []

    def flood():
        try:
            out = client.completions.create(model="x", prompt="ROMEO:", max_tokens=200, temperature=0)
            outcomes.append(out.choices[0].finish_reason)
        except openai.APIStatusError as e:
            outcomes.append(e.status_code)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 503 in outcomes and set(outcomes) <= {503, "length", "stop"} and len(outcomes) == 8
    assert any(o != 503 for o in outcomes)
    wait_idle(server)
    assert client.completions.create(model="x", prompt="ROMEO:", max_tokens=2).choices[0].text is not None


def test_concurrent_requests_get_what_they_get_alone(client, llm):
    """Two requests sharing the server at once each get what the library gives them alone."""
    prompts = ["ROMEO:", "JULIET:"]
    want = [llm.create_completion(p, max_tokens=40, temperature=0.9, seed=9)["choices"][0]["text"] for p in prompts]
    got = [None, None]

    def alongside(i):
        got[i] = client.completions.create(model="x", prompt=prompts[i], max_tokens=40, temperature=0.9,
                                           seed=9).choices[0].text

    threads = [threading.Thread(target=alongside, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


# ---- continuous batching: four slots sharing each step ------------------------------------------------------

@pytest.fixture(scope="module")
def busy_server():
    yield from start_server("--parallel", "4", "--queue", "8")


@pytest.fixture(scope="module")
def busy_client(busy_server):
    return openai_client(busy_server)


def ask(client, i: int) -> dict:
    """Request ``i`` of a mix: completions and chat, greedy and seeded, streamed and not, with logprobs and
    stop strings; everything of the answer that must not depend on other requests."""
    prompt = ["ROMEO:", "JULIET: O", "First Citizen:\nWe are", "KING HENRY:", "Hark"][i % 5]
    options = dict(max_tokens=8 + i % 13, temperature=0 if i % 3 == 0 else 0.9, seed=i, stop=["\n\n"])
    if i % 4 == 3:
        messages = [{"role": "user", "content": prompt}]
        if i % 8 == 7:
            chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True, **options))
            return {"text": "".join(c.choices[0].delta.content or "" for c in chunks),
                    "finish": chunks[-1].choices[0].finish_reason}
        out = client.chat.completions.create(model="x", messages=messages, logprobs=True, top_logprobs=2, **options)
        return {"text": out.choices[0].message.content, "finish": out.choices[0].finish_reason,
                "logprobs": out.choices[0].logprobs.model_dump(), "usage": out.usage.model_dump()}
    if i % 2:
        chunks = list(client.completions.create(model="x", prompt=prompt, stream=True, logprobs=1, **options))
        return {"text": "".join(c.choices[0].text for c in chunks), "finish": chunks[-1].choices[0].finish_reason,
                "logprobs": [c.choices[0].logprobs.model_dump() for c in chunks[:-1]]}
    out = client.completions.create(model="x", prompt=prompt, logprobs=3, **options)
    return {"text": out.choices[0].text, "finish": out.choices[0].finish_reason,
            "logprobs": out.choices[0].logprobs.model_dump(), "usage": out.usage.model_dump()}


def test_8_clients_by_4_requests_get_the_bits_they_get_alone(busy_client, busy_server):
    """32 requests, each first served alone, then all from 8 clients at once (4 each, one after another)
    on 4 slots: every answer complete and the same, logprobs to the last bit."""
    alone = [ask(busy_client, i) for i in range(32)]
    together = [None] * 32

    def client_thread(c):
        for i in range(c, 32, 8):
            together[i] = ask(busy_client, i)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert all(a["finish"] in ("stop", "length") for a in alone) and sum(bool(a["text"]) for a in alone) > 16
    wait_idle(busy_server, 4)


KILLED_CLIENT = """
import socket, sys
body = b'{"prompt": "ROMEO:", "max_tokens": 2000, "stream": true}'
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
request = (b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer %s\\r\\n"
           b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n%s")
s.sendall(request % (sys.argv[2].encode(), len(body), body))
seen = b""
while b"data: " not in seen:
    seen += s.recv(4096)
print("streaming", flush=True)
sys.stdin.read()
"""


def test_a_killed_client_frees_its_slot_at_once(busy_client, busy_server):
    """A client process killed mid-stream: its slot is idle again within a second, and the server serves on."""
    client = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(busy_server), KEY], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "streaming\n"
        assert request(busy_server, "/health")[1]["slots_idle"] == 3
    finally:
        client.kill()
        client.wait()
    assert wait_idle(busy_server, 4) < 1
    assert busy_client.completions.create(model="x", prompt="ROMEO:", max_tokens=4).choices[0].finish_reason
