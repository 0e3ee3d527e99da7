"""Adapter management end to end: the `loraplex adapters` CLI against the real server, replace
under load, restart, and a server killed in the middle of an upload."""

import concurrent.futures
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.parse

import openai
import pytest

from conftest import ADAPTER, BINARY, Server
from test_openai import ids_of, reliable_ids

ADMIN = "admin-key"
INFER = "inference-key"


def cli(server_url, *args, key=ADMIN):
    env = {**os.environ, "LORAPLEX_URL": server_url or "http://127.0.0.1:9"}
    env.pop("LORAPLEX_ADMIN_KEY", None)
    if key:
        env["LORAPLEX_ADMIN_KEY"] = key
    return subprocess.run([str(BINARY), "adapters", *args], env=env, capture_output=True, text=True, timeout=120)


def cli_json(server, *args):
    r = cli(server.url, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def client_of(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=INFER, max_retries=0, timeout=120)


def start(store=None):
    return Server("--dtype", "f32", "--admin-api-key", ADMIN, "--api-key", INFER, store=store)


def variant_of_adapter(alpha_factor):
    """A copy of the golden adapter whose lora_alpha is scaled: other content, other outputs."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="adapter-variant-"))
    cfg = json.loads((ADAPTER / "adapter_config.json").read_text())
    cfg["lora_alpha"] = cfg["lora_alpha"] * alpha_factor
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copy(ADAPTER / "adapter_model.safetensors", d / "adapter_model.safetensors")
    return d


@pytest.fixture(scope="module")
def admin_server():
    s = start()
    yield s
    s.stop()


def test_upload_via_cli_then_serve_the_golden_output_then_delete(admin_server, golden):
    s = admin_server
    r = cli(s.url, "upload", str(ADAPTER), "--name", "uploaded", "--description", "golden r8 qv", "--label", "team=qa")
    assert r.returncode == 0, r.stderr
    card = cli_json(s, "show", "uploaded")
    assert card["version"] == 1 and card["rank"] == 8 and card["targets"] == ["q_proj", "v_proj"]
    assert card["labels"] == {"team": "qa"}
    c = client_of(s)
    assert "uploaded" in [m.id for m in c.models.list().data]
    for case in golden["cases"]:
        want = reliable_ids(case["results"]["rand-r8-qv"])
        extra = {"return_tokens_as_token_ids": True, "ignore_eos": True}
        if case["kind"] == "chat":
            out = c.chat.completions.create(model="uploaded", messages=case["messages"], temperature=0, max_tokens=32,
                                            logprobs=True, extra_body=extra)
            got = ids_of([t.token for t in out.choices[0].logprobs.content])
        else:
            out = c.completions.create(model="uploaded", prompt=case["input_ids"], temperature=0, max_tokens=32,
                                       logprobs=0, extra_body=extra)
            got = ids_of(out.choices[0].logprobs.tokens)
        assert got[: len(want)] == want, case["id"]
    listed = cli(s.url, "list")
    assert listed.returncode == 0 and "uploaded" in listed.stdout
    row = next(a for a in cli_json(s, "list")["data"] if a["id"] == "uploaded")
    assert row["requests"] == len(golden["cases"]) and row["resident"]
    r = cli(s.url, "delete", "uploaded")
    assert r.returncode == 0, r.stderr
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="uploaded", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert cli(s.url, "show", "uploaded").returncode == 1


def test_cli_exit_codes_and_keys(admin_server):
    s = admin_server
    no_key = cli(s.url, "list", key=None)
    assert no_key.returncode == 1 and "401" in no_key.stderr
    wrong_kind = cli(s.url, "list", key=INFER)
    assert wrong_kind.returncode == 1 and "403" in wrong_kind.stderr
    refused = cli(s.url, "upload", str(ADAPTER), "--name", "x", key=INFER)
    assert refused.returncode == 1 and "403" in refused.stderr
    assert cli(None, "list").returncode == 3
    broken = pathlib.Path(tempfile.mkdtemp())
    (broken / "adapter_config.json").write_text('{"r": 8, "use_dora": true, "target_modules": ["q_proj"]}')
    (broken / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    local = cli(s.url, "upload", str(broken), "--name", "broken")
    assert local.returncode == 4 and "DoRA" in local.stderr
    bad_name = cli(s.url, "upload", str(ADAPTER), "--name", "../etc")
    assert bad_name.returncode == 1 and "name" in bad_name.stderr


def stream_text(client, model, prompt, max_tokens, on_first=None):
    chunks = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    text, first = [], True
    for ch in chunks:
        if ch.choices and ch.choices[0].text:
            text.append(ch.choices[0].text)
            if first and on_first:
                on_first()
            first = False
    return "".join(text), time.time()


def test_replace_under_load_keeps_running_streams_on_the_old_version():
    s = start()
    try:
        c = client_of(s)
        v2 = variant_of_adapter(4)
        prompt, n = "The history of the city begins", 40
        assert cli(s.url, "upload", str(v2), "--name", "reference-v2").returncode == 0
        solo_v2 = stream_text(c, "reference-v2", prompt, n)[0]
        assert cli(s.url, "upload", str(ADAPTER), "--name", "live").returncode == 0
        solo_v1 = stream_text(c, "live", prompt, n)[0]
        assert solo_v1 != solo_v2

        started = concurrent.futures.ThreadPoolExecutor(4)
        import threading

        barrier = threading.Semaphore(0)
        futures = [started.submit(stream_text, c, "live", prompt, n, barrier.release) for _ in range(4)]
        for _ in range(4):
            assert barrier.acquire(timeout=120)
        r = cli(s.url, "upload", str(v2), "--name", "live")
        replaced_at = time.time()
        assert r.returncode == 0, r.stderr
        assert cli_json(s, "show", "live")["version"] == 2
        after = c.completions.create(model="live", prompt=prompt, max_tokens=n, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
        results = [f.result(timeout=300) for f in futures]
        assert all(t == solo_v1 for t, _ in results), "running streams finished on the old version"
        assert all(done > replaced_at for _, done in results), "the streams overlapped the replace"
        assert after == solo_v2, "new requests use the new version"
    finally:
        s.stop()


def test_restart_serves_the_same_versions():
    store = tempfile.mkdtemp(prefix="loraplex-store-")
    s = start(store)
    try:
        assert cli(s.url, "upload", str(ADAPTER), "--name", "durable").returncode == 0
        assert cli(s.url, "upload", str(variant_of_adapter(2)), "--name", "durable").returncode == 0
        before = cli_json(s, "show", "durable")
        out_before = client_of(s).completions.create(model="durable", prompt="Hello", max_tokens=8, temperature=0).choices[0].text
    finally:
        s.stop()
    s = start(store)
    try:
        after = cli_json(s, "show", "durable")
        for k in ("version", "sha256", "size", "rank", "created"):
            assert after[k] == before[k], k
        assert [v["sha256"] for v in after["versions"]] == [v["sha256"] for v in before["versions"]]
        out_after = client_of(s).completions.create(model="durable", prompt="Hello", max_tokens=8, temperature=0).choices[0].text
        assert out_after == out_before
    finally:
        s.stop()


def test_sigkill_during_an_upload_leaves_the_store_consistent():
    store = pathlib.Path(tempfile.mkdtemp(prefix="loraplex-store-"))
    s = start(store)
    try:
        assert cli(s.url, "upload", str(ADAPTER), "--name", "survivor").returncode == 0
        before = cli_json(s, "show", "survivor")
        weights = (ADAPTER / "adapter_model.safetensors").read_bytes()
        boundary = "killtest"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\npartial\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"adapter_model.safetensors\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        total = len(head) + len(weights) * 4 + 64
        u = urllib.parse.urlparse(s.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.putrequest("POST", "/v1/adapters")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(total))
        conn.putheader("Authorization", f"Bearer {ADMIN}")
        conn.endheaders()
        conn.send(head + weights)  # a quarter of the declared body
        deadline = time.time() + 30
        while time.time() < deadline and not any((store / ".staging").rglob("upload-*")):
            time.sleep(0.05)
        assert any((store / ".staging").rglob("upload-*")), "the upload was being written when killed"
        s.proc.kill()
        s.proc.wait(timeout=30)
        conn.close()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    s = start(store)
    try:
        assert list((store / ".staging").iterdir()) == [], "leftovers are cleaned at start-up"
        names = [a["id"] for a in cli_json(s, "list")["data"]]
        assert names == ["survivor"]
        assert not (store / "partial").exists()
        after = cli_json(s, "show", "survivor")
        assert (after["version"], after["sha256"]) == (before["version"], before["sha256"])
        assert client_of(s).completions.create(model="survivor", prompt="Hi", max_tokens=2).choices[0].text is not None
    finally:
        s.stop()
