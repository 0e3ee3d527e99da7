"""Routes and experiments end to end: `loraplex experiments` against the real server, the OpenAI SDK
sending `model="support"`, feedback, the JSONL records read back with DuckDB, a restart, the 409 for a
routed adapter, and stop.

The tests of this module share one server (and its store and records dirs) and run in file order: the
A/B route is created first, traffic and feedback follow, then the restart, and stop comes last."""

import json
import os
import pathlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import duckdb
import openai
import pytest

from conftest import ADAPTER, BINARY, Server
from test_admin import ADMIN, INFER, cli, variant_of_adapter

ARMS = {"a": "ad-v1", "b": "ad-v2"}
USERS = [f"user-{i}" for i in range(12)]
MESSAGES = [{"role": "user", "content": "Say hi."}]


def xcli(url, *args, key=ADMIN, stdin=None):
    env = {**os.environ, "LORAPLEX_URL": url or "http://127.0.0.1:9"}
    env.pop("LORAPLEX_ADMIN_KEY", None)
    if key:
        env["LORAPLEX_ADMIN_KEY"] = key
    return subprocess.run([str(BINARY), "experiments", *args], env=env, capture_output=True, text=True,
                          timeout=120, input=stdin)


def xjson(url, *args):
    r = xcli(url, "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def post(url, path, body, key=INFER):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def delete(url, path, key=ADMIN):
    req = urllib.request.Request(url + path, method="DELETE", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sql(query):
    return duckdb.connect().execute(query).fetchall()


def until(what, check, timeout=60):
    """Records are written off the request path: wait (bounded) until `check()` is truthy."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got or time.time() > deadline:
            assert got, f"timed out waiting for {what}"
            return got
        time.sleep(0.25)


class Lab:
    """One server over a store and a records dir that outlive it (restarts start a new one on them)."""

    def __init__(self):
        self.store = tempfile.mkdtemp(prefix="loraplex-store-")
        self.records = pathlib.Path(tempfile.mkdtemp(prefix="loraplex-records-"))
        self.server = self.start()
        self.served = {}  # request id -> arm, every request on "support"
        self.arm_of_u1 = None

    def start(self):
        return Server("--dtype", "f32", "--admin-api-key", ADMIN, "--api-key", INFER,
                      "--records-dir", str(self.records), store=self.store)

    @property
    def url(self):
        return self.server.url

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=INFER, max_retries=0, timeout=120)

    def ask(self, user, model="support", **kw):
        raw = self.client().chat.completions.with_raw_response.create(
            model=model, user=user, messages=MESSAGES, max_tokens=2, temperature=0, **kw)
        out = raw.parse()
        if model == "support":
            self.served[out.id] = raw.headers.get("x-loraplex-arm")
        return raw.headers, out

    def glob(self, kind):
        return f"{self.records}/{kind}-*.jsonl".replace("'", "''")

    def arm_counts(self, experiment_id):
        if not list(self.records.glob("requests-*.jsonl")):
            return {}
        rows = sql(f"SELECT arm, count(*) FROM read_json_auto('{self.glob('requests')}') "
                   f"WHERE route = 'support' AND experiment_id = '{experiment_id}' GROUP BY arm")
        return dict(rows)

    def report(self):
        return xjson(self.url, "report", "support")


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    for name, path in [("ad-v1", ADAPTER), ("ad-v2", variant_of_adapter(2)), ("ad-v3", ADAPTER)]:
        r = cli(lab.url, "upload", str(path), "--name", name)
        assert r.returncode == 0, r.stderr
    yield lab
    lab.server.stop()


def test_create_an_ab_route_with_a_shadow_via_the_cli(lab):
    r = xcli(lab.url, "create", "--name", "support", "--type", "ab", "--unit", "user", "--salt", "e2e-fixed",
             "--arm", "a=ad-v1:50", "--arm", "b=ad-v2:50", "--shadow", "ad-v3:score@1.0")
    assert r.returncode == 0, r.stderr
    assert "support" in r.stdout and "ad-v1" in r.stdout
    shown = xjson(lab.url, "show", "support")
    assert shown["type"] == "ab" and shown["status"] == "active" and shown["unit"] == "user"
    assert [(a["name"], a["model"], a["weight"]) for a in shown["arms"]] == [("a", "ad-v1", 50), ("b", "ad-v2", 50)]
    assert [s["model"] for s in shown["shadows"]] == ["ad-v3"]
    listed = xcli(lab.url, "list")
    assert listed.returncode == 0 and "support" in listed.stdout and "a=ad-v1:50" in listed.stdout
    assert "support" in [e["name"] for e in xjson(lab.url, "list")["data"]]
    assert "support" in [m.id for m in lab.client().models.list().data]


def test_an_arm_is_sticky_per_user_and_users_spread_over_both_arms(lab):
    arms = set()
    for _ in range(20):
        headers, _ = lab.ask("u1")
        assert headers.get("x-loraplex-route") == "support"
        arm = headers.get("x-loraplex-arm")
        assert arm in ARMS, headers
        assert headers.get("x-loraplex-model") == ARMS[arm]
        assert headers.get("x-loraplex-adapter-version") == "1"
        arms.add(arm)
    assert len(arms) == 1, f"u1 moved between arms: {arms}"
    lab.arm_of_u1 = arms.pop()
    seen = {}
    for user in USERS:
        headers, _ = lab.ask(user)
        seen[user] = headers.get("x-loraplex-arm")
        assert lab.ask(user)[0].get("x-loraplex-arm") == seen[user], user
    assert set(seen.values()) == set(ARMS), f"12 users all on one arm: {seen}"
    # The arm's adapter served the request directly too: a request for an adapter name still works.
    assert lab.ask("u1", model="ad-v1")[0].get("x-loraplex-arm") is None


def test_feedback_joins_the_records_and_the_counts_match_the_report(lab):
    rated = {}
    for i, (rid, arm) in enumerate(sorted(lab.served.items())[:10]):
        status, body = post(lab.url, "/v1/feedback", {"request_id": rid, "value": float(i % 2), "label": "thumbs"})
        assert (status, body.get("status")) == (200, "recorded"), body
        rated[rid] = (arm, float(i % 2))
    experiment_id = xjson(lab.url, "show", "support")["id"]
    counts = until("the request records", lambda: (c := lab.arm_counts(experiment_id))
                   and sum(c.values()) == len(lab.served) and c)
    want = {arm: list(lab.served.values()).count(arm) for arm in ARMS}
    assert counts == {a: n for a, n in want.items() if n}, "records agree with the arm headers"

    report = until("the report to count every request",
                   lambda: (r := lab.report()) and sum(a["requests"] for a in r["arms"]) == len(lab.served) and r)
    assert {a["name"]: a["requests"] for a in report["arms"] if a["requests"]} == counts
    assert {a["name"]: a["model"] for a in report["arms"]} == ARMS

    until("the feedback records", lambda: list(lab.records.glob("feedback-*.jsonl")) and sql(
        f"SELECT count(*) FROM read_json_auto('{lab.glob('feedback')}')")[0][0] == len(rated))
    joined = sql(f"SELECT r.request_id, r.arm, f.value FROM read_json_auto('{lab.glob('requests')}') r "
                 f"JOIN read_json_auto('{lab.glob('feedback')}') f USING (request_id)")
    assert {rid: (arm, value) for rid, arm, value in joined} == rated
    for arm in report["arms"]:
        n = sum(1 for a, _ in rated.values() if a == arm["name"])
        assert arm["feedback"]["count"] == n, arm

    shadow = until("every primary scored or dropped by the shadow", lambda: (r := lab.report())["shadows"] and (
        (s := r["shadows"][0])["scored"] + s["dropped"] + s.get("failed", 0) == len(lab.served)) and s)
    assert shadow["model"] == "ad-v3" and shadow["scored"] > 0, shadow
    scored = sql(f"SELECT count(*) FROM read_json_auto('{lab.glob('shadows')}') "
                 f"WHERE route = 'support' AND status = 'scored'")[0][0]
    assert scored == shadow["scored"]

    text = xcli(lab.url, "report", "support")
    assert text.returncode == 0, text.stderr
    assert "REQUESTS" in text.stdout and "ad-v1" in text.stdout and "ad-v3" in text.stdout


def test_bad_configurations_are_refused_and_change_nothing(lab):
    before = xjson(lab.url, "list")
    support = xjson(lab.url, "show", "support")
    for args, reason in [
        (["--name", "bad", "--arm", "a=no-such-adapter", "--arm", "b=ad-v1"], "no-such-adapter"),
        (["--name", "ad-v1", "--model", "ad-v2"], "ad-v1"),
        (["--name", "smollm2", "--model", "ad-v2"], "smollm2"),
        (["--name", "bad", "--arm", "a=ad-v1:0", "--arm", "b=ad-v2"], "weight"),
        (["--name", "bad", "--arm", "a=ad-v1", "--arm", "a=ad-v2"], "two arms"),
        (["--name", "bad", "--type", "switchback", "--window-s", "60", "--burn-in-s", "120", "--seed", "1",
          "--arm", "a=ad-v1", "--arm", "b=ad-v2"], "burn"),
    ]:
        r = xcli(lab.url, "create", *args)
        assert r.returncode == 1 and "400" in r.stderr and reason in r.stderr, (args, r.stderr)
    assert xjson(lab.url, "list") == before
    r = xcli(lab.url, "update", "support", "--weight", "a=70", "--weight", "zzz=30")
    assert r.returncode == 1 and "zzz" in r.stderr, r.stderr
    assert xjson(lab.url, "show", "support") == support, "nothing half-applied"


def test_cli_exit_codes(lab):
    assert xcli(lab.url, "list", key=None).returncode == 1
    assert xcli(lab.url, "list", key=INFER).returncode == 1
    assert xcli(None, "list").returncode == 3
    assert xcli(lab.url, "create", "--name", "x", "--arm", "broken").returncode == 2
    assert xcli(lab.url, "update", "support").returncode == 4, "nothing to change, nothing sent"
    bad = pathlib.Path(tempfile.mkdtemp()) / "spec.toml"
    bad.write_text("name = ")
    r = xcli(lab.url, "create", "--file", str(bad))
    assert r.returncode == 4 and "spec.toml" in r.stderr
    assert xcli(lab.url, "show", "no-such-route").returncode == 1


def test_segmented_and_switchback_routes_from_flags_and_files(lab):
    r = xcli(lab.url, "create", "--name", "assist", "--segment-key", "geo", "--segment", "eu=ad-v1",
             "--segment", "us=ad-v2", "--default", "smollm2")
    assert r.returncode == 0, r.stderr
    for geo, model in [("eu", "ad-v1"), ("us", "ad-v2"), ("mars", "smollm2")]:
        headers, _ = lab.ask("u1", model="assist", metadata={"geo": geo})
        assert headers.get("x-loraplex-model") == model, (geo, dict(headers))
    spec = pathlib.Path(tempfile.mkdtemp()) / "batch.yaml"
    spec.write_text("name: batch\ntype: switchback\nwindow_s: 3600\nburn_in_s: 60\nseed: 7\n"
                    "arms:\n  - {name: a, model: ad-v1}\n  - {name: b, model: ad-v2}\n")
    r = xcli(lab.url, "create", "--file", str(spec))
    assert r.returncode == 0, r.stderr
    shown = xjson(lab.url, "show", "batch")
    assert shown["type"] == "switchback" and shown["schedule"], shown
    assert {w["arm"] for w in shown["schedule"]} <= {"a", "b"}
    for user in ("u1", "u2", "u3"):
        at = time.time() * 1000
        arm = lab.ask(user, model="batch")[0].get("x-loraplex-arm")
        window = [w for w in shown["schedule"] if w["start_ms"] <= at < w["end_ms"]]
        assert [w["arm"] for w in window] == [arm], "the arm is the current window's, whoever asks"
    # Paused: the control serves everyone.
    assert xcli(lab.url, "update", "batch", "--pause").returncode == 0
    assert xjson(lab.url, "show", "batch")["status"] == "paused"
    assert lab.ask("u1", model="batch")[0].get("x-loraplex-arm") == "a"
    assert xcli(lab.url, "update", "batch", "--resume").returncode == 0
    for name in ("assist", "batch"):
        assert xcli(lab.url, "stop", name).returncode == 0


def test_a_restart_keeps_the_route_the_assignment_and_the_records(lab):
    experiment_id = xjson(lab.url, "show", "support")["id"]
    before = lab.arm_counts(experiment_id)
    lab.server.stop()
    lab.server = lab.start()
    assert xjson(lab.url, "show", "support")["id"] == experiment_id
    headers, _ = lab.ask("u1")
    assert headers.get("x-loraplex-arm") == lab.arm_of_u1
    assert sum(before.values()) > 0
    after = until("the new request's record", lambda: (c := lab.arm_counts(experiment_id))
                  and sum(c.values()) == len(lab.served) and c)
    assert after[lab.arm_of_u1] == before.get(lab.arm_of_u1, 0) + 1
    report = until("the report over both runs",
                   lambda: (r := lab.report()) and sum(a["requests"] for a in r["arms"]) == len(lab.served) and r)
    assert {a["name"]: a["requests"] for a in report["arms"] if a["requests"]} == after


def test_deleting_a_routed_or_shadow_adapter_is_refused_naming_the_route(lab):
    for adapter in ("ad-v1", "ad-v3"):
        r = cli(lab.url, "delete", adapter)
        assert r.returncode == 1 and "409" in r.stderr and "support" in r.stderr, r.stderr
        status, body = delete(lab.url, f"/v1/adapters/{adapter}")
        assert status == 409 and "support" in body["error"]["message"], body
    assert "ad-v1" in [m.id for m in lab.client().models.list().data]


def test_stop_makes_the_name_404_and_frees_its_adapters(lab):
    r = xcli(lab.url, "stop", "support")
    assert r.returncode == 0 and "stopped support" in r.stdout, r.stderr
    with pytest.raises(openai.NotFoundError):
        lab.ask("u1")
    assert "support" not in [m.id for m in lab.client().models.list().data]
    assert xcli(lab.url, "show", "support").returncode == 1
    assert cli(lab.url, "delete", "ad-v3").returncode == 0, "no live route uses it any more"
    assert list(lab.records.glob("requests-*.jsonl")), "stopping keeps the records"
