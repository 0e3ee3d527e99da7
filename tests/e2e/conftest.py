"""Starts the real `loraplex serve` binary on a free loopback port for the end-to-end tests."""

import json
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
BINARY = ROOT / "target" / "debug" / "loraplex"
MODEL = ROOT / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER = GOLDEN / "smollm2-adapters" / "rand-r8-qv"


class Server:
    def __init__(self, *args, store=None):
        assert BINARY.exists(), f"{BINARY} missing: run cargo build first"
        # Never the user's own adapter store.
        self.store = pathlib.Path(store or tempfile.mkdtemp(prefix="loraplex-store-"))
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", str(MODEL), "--port", "0", "--served-model-name", "smollm2",
             "--adapter-store", str(self.store), *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.time() + 120
        self.url = None
        while time.time() < deadline and self.url is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
        assert self.url, "server did not start"
        # Keep draining stderr so the server never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)

    def get_json(self, path, key=None):
        req = urllib.request.Request(self.url + path)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server():
    s = Server("--dtype", "f32", "--lora-modules", f"rand-r8-qv={ADAPTER}")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return client_of(server)


@pytest.fixture(scope="session")
def quant_server():
    """The default weights path (`--dtype auto`: 8-bit on CPU), with the same adapter. Started
    only by the tests that ask for it, once for the session."""
    s = Server("--lora-modules", f"rand-r8-qv={ADAPTER}")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def quant_client(quant_server):
    return client_of(quant_server)


def client_of(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def golden():
    return json.loads((GOLDEN / "smollm2_cases.json").read_text())
