"""Structured outputs through the official OpenAI SDK against the real server: OpenAI's
`response_format` (json_schema, json_object, `chat.completions.parse` with a Pydantic model),
vLLM's `structured_outputs` and `guided_*` fields on both endpoints, on the quantized default
weights and on `--dtype f32`, with and without an adapter, and the refusals.

The model has 135M parameters: the schemas bound every string (`maxLength`), array (`maxItems`)
and number, so greedy outputs end well inside `max_tokens`; requests go out concurrently, so the
server batches constrained rows (base and adapter) together."""

import concurrent.futures
import json
import re
import urllib.error
import urllib.request
from typing import Annotated, List, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

ADAPTER = "rand-r8-qv"

# (name, job, city, item, quantity, price, rating, complaint)
SUBJECTS = [
    ("Alice", "teacher", "Paris", "pencil", 3, 1.5, 4, "my order never arrived"),
    ("Bob", "baker", "Berlin", "lamp", 1, 25.0, 5, "the app crashes on start"),
    ("Carla", "nurse", "Madrid", "chair", 4, 49.99, 3, "I was charged twice"),
    ("David", "pilot", "Rome", "book", 2, 12.0, 5, "I cannot reset my password"),
    ("Emma", "chef", "London", "mug", 6, 8.5, 4, "the screen is cracked"),
    ("Farid", "lawyer", "Cairo", "kettle", 1, 30.0, 2, "delivery was late"),
    ("Grace", "artist", "Dublin", "pillow", 2, 15.0, 5, "wrong size was sent"),
    ("Hiro", "engineer", "Tokyo", "keyboard", 1, 89.0, 4, "keys are sticking"),
    ("Ines", "doctor", "Lisbon", "towel", 5, 7.25, 3, "the color faded"),
    ("Jonas", "farmer", "Oslo", "shovel", 1, 22.0, 4, "the handle broke"),
    ("Kemal", "driver", "Ankara", "tire", 4, 75.0, 3, "one tire is flat"),
    ("Lena", "writer", "Vienna", "notebook", 10, 2.0, 5, "pages are missing"),
    ("Mateo", "singer", "Lima", "guitar", 1, 199.0, 5, "a string snapped"),
    ("Nora", "student", "Boston", "backpack", 1, 45.0, 4, "the zipper is stuck"),
    ("Omar", "banker", "Dubai", "watch", 1, 250.0, 2, "it stopped working"),
    ("Priya", "coder", "Delhi", "mouse", 2, 19.5, 4, "the cursor jumps"),
    ("Quinn", "actor", "Sydney", "hat", 3, 18.0, 3, "it is too small"),
    ("Rosa", "painter", "Mexico", "brush", 8, 3.5, 5, "bristles fall out"),
    ("Sven", "sailor", "Stockholm", "rope", 2, 11.0, 4, "it smells bad"),
    ("Tara", "dancer", "Toronto", "shoes", 1, 60.0, 5, "the sole came off"),
]

FLAT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "job": {"type": "string", "maxLength": 16},
        "city": {"type": "string", "maxLength": 16},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "job", "city", "employed"],
    "additionalProperties": False,
}

NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 16},
                "plan": {"enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name", "plan"],
            "additionalProperties": False,
        },
    },
    "required": ["title", "priority", "tags", "customer"],
    "additionalProperties": False,
}

NUMBERS = {
    "type": "object",
    "properties": {
        "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
        "unit_price": {"type": "number", "minimum": 0, "maximum": 1000},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "discount": {"type": "number", "exclusiveMinimum": -1, "exclusiveMaximum": 1},
    },
    "required": ["quantity", "unit_price", "rating", "discount"],
    "additionalProperties": False,
}

SCHEMAS = {"flat": FLAT, "nested": NESTED, "numbers": NUMBERS}
MAX_TOKENS = {"flat": 64, "nested": 96, "numbers": 64}


def prompt(kind, s):
    name, job, city, item, qty, price, rating, complaint = s
    if kind == "flat":
        return f"{name} works as a {job} in {city}. Describe {name} as a JSON object."
    if kind == "nested":
        return f'{name} wrote to support: "{complaint}". Write the support ticket as JSON.'
    return f"{name} bought {qty} {item}s at {price} dollars each and rated them {rating} stars. Give the order as JSON."


def json_schema_format(kind):
    return {"type": "json_schema", "json_schema": {"name": kind, "schema": SCHEMAS[kind], "strict": True}}


def chat(client, content, model="smollm2", **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 64)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def pooled(fn, jobs, workers=24):
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, jobs))


def problem(kind, schema, text, finish):
    """Why `text` is not a valid answer under `schema`, or None."""
    if finish != "stop":
        return f"{kind}: finish_reason {finish}: {text!r}"
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError) as e:
        return f"{kind}: {type(e).__name__}: {text!r}: {str(e).splitlines()[0]}"
    return None


@pytest.fixture(scope="module", params=["quantized", "f32"])
def any_client(request):
    return request.getfixturevalue("quant_client" if request.param == "quantized" else "client")


def test_json_schema_answers_validate_base_and_adapter(any_client):
    jobs = [(model, kind, s) for model in ("smollm2", ADAPTER) for kind in SCHEMAS for s in SUBJECTS]

    def one(job):
        model, kind, s = job
        r = chat(any_client, prompt(kind, s), model=model, response_format=json_schema_format(kind),
                 max_tokens=MAX_TOKENS[kind])
        c = r.choices[0]
        return problem(f"{model}/{kind}/{s[0]}", SCHEMAS[kind], c.message.content, c.finish_reason)

    problems = [p for p in pooled(one, jobs) if p]
    assert not problems, f"{len(problems)} of {len(jobs)} answers invalid:\n" + "\n".join(problems[:10])


def test_json_schema_on_completions_and_vllm_fields(any_client):
    """The same schema through /v1/completions (response_format, structured_outputs.json,
    guided_json as an object and as a JSON string) and through chat's vLLM fields."""
    s = SUBJECTS[0]
    text = f"Question: {prompt('flat', s)}\nAnswer:"
    variants = [
        ("completions", {"response_format": json_schema_format("flat")}),
        ("completions", {"structured_outputs": {"json": FLAT}}),
        ("completions", {"guided_json": FLAT}),
        ("completions", {"guided_json": json.dumps(FLAT)}),
        ("chat", {"structured_outputs": {"json": FLAT}}),
        ("chat", {"guided_json": FLAT}),
    ]

    def one(v):
        endpoint, extra = v
        if endpoint == "chat":
            r = chat(any_client, prompt("flat", s), extra_body=extra)
            c = r.choices[0]
            return problem(f"chat {list(extra)}", FLAT, c.message.content, c.finish_reason)
        r = any_client.completions.create(model="smollm2", prompt=text, max_tokens=64, temperature=0, extra_body=extra)
        c = r.choices[0]
        return problem(f"completions {list(extra)}", FLAT, c.text, c.finish_reason)

    problems = [p for p in pooled(one, variants) if p]
    assert not problems, "\n".join(problems)


def test_sampled_and_n_choices_stay_in_the_schema(client):
    """Sampling (temperature, top_p, seed) draws from the allowed tokens only; n=2 constrains
    every choice."""
    jobs = [(kind, s, k) for k, (kind, s) in enumerate((kind, s) for kind in SCHEMAS for s in SUBJECTS[:2])]

    def one(job):
        kind, s, k = job
        r = chat(client, prompt(kind, s), response_format=json_schema_format(kind), max_tokens=MAX_TOKENS[kind] + 32,
                 temperature=1.0, top_p=0.95, seed=k, n=2)
        return [problem(f"{kind}/{s[0]}/seed {k}", SCHEMAS[kind], c.message.content, c.finish_reason) for c in r.choices]

    problems = [p for ps in pooled(one, jobs) for p in ps if p]
    assert not problems, "\n".join(problems)
    again = chat(client, prompt("nested", SUBJECTS[0]), response_format=json_schema_format("nested"),
                 max_tokens=128, temperature=1.0, seed=3)
    once = chat(client, prompt("nested", SUBJECTS[0]), response_format=json_schema_format("nested"),
                max_tokens=128, temperature=1.0, seed=3)
    assert again.choices[0].message.content == once.choices[0].message.content, "seeded sampling repeats"


def test_streamed_json_schema_equals_non_streamed(client):
    kw = dict(response_format=json_schema_format("nested"), max_tokens=96)
    full = chat(client, prompt("nested", SUBJECTS[1]), **kw)
    text, finish = "", None
    for chunk in chat(client, prompt("nested", SUBJECTS[1]), stream=True, **kw):
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), NESTED)


def test_json_object_mode_gives_an_object(any_client):
    # As OpenAI says: the prompt itself must ask for JSON.
    prompts = [
        'Reply in JSON: an object with the key "color" set to the color of the sky.',
        'Answer with a JSON object that has the keys "name" and "age" for Bob, who is 42.',
        'Return a JSON object with the keys "city" and "country" for Paris.',
    ]

    def one(p):
        c = chat(any_client, p, response_format={"type": "json_object"}, max_tokens=128).choices[0]
        try:
            obj = json.loads(c.message.content)
        except ValueError as e:
            return f"{p!r}: {c.finish_reason}: {c.message.content!r}: {e}"
        return None if isinstance(obj, dict) and c.finish_reason == "stop" else f"{p!r}: {c.message.content!r}"

    problems = [p for p in pooled(one, prompts) if p]
    assert not problems, "\n".join(problems)
    # `text` is the default: no constraint.
    r = chat(any_client, "Say hello.", response_format={"type": "text"}, max_tokens=8)
    assert r.choices[0].message.content


PHONE = r"\(\d{3}\) \d{3}-\d{4}"
SENTIMENTS = ["positive", "negative", "neutral"]
LARK = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no" | "maybe"'


def test_regex_choice_and_grammar_on_chat_and_completions(any_client):
    cases = []
    for endpoint in ("chat", "completions"):
        for style in ("structured_outputs", "guided"):
            def field(kind, value, style=style):
                return {"structured_outputs": {kind: value}} if style == "structured_outputs" else {f"guided_{kind}": value}

            cases += [
                (endpoint, "What is the phone number of the office?", field("regex", PHONE),
                 lambda t: re.fullmatch(PHONE, t)),
                (endpoint, 'Is this review positive, negative or neutral? "I love this phone!"', field("choice", SENTIMENTS),
                 lambda t: t in SENTIMENTS),
                (endpoint, "Is the sky blue?", field("grammar", LARK),
                 lambda t: re.fullmatch(r"The answer is (yes|no|maybe)\.", t)),
            ]

    def one(case):
        endpoint, text, extra, ok = case
        if endpoint == "chat":
            c = chat(any_client, text, max_tokens=32, extra_body=extra).choices[0]
            out = c.message.content
        else:
            c = any_client.completions.create(model="smollm2", prompt=f"Q: {text}\nA:", max_tokens=32, temperature=0,
                                              extra_body=extra).choices[0]
            out = c.text
        return None if ok(out) and c.finish_reason == "stop" else f"{endpoint} {extra}: {c.finish_reason}: {out!r}"

    problems = [p for p in pooled(one, cases) if p]
    assert not problems, "\n".join(problems)


def test_choice_streams_and_works_with_an_adapter(client):
    extra = {"structured_outputs": {"choice": SENTIMENTS}}
    for model in ("smollm2", ADAPTER):
        text = "".join(
            ch.delta.content or ""
            for chunk in chat(client, 'Sentiment of "This is awful."?', model=model, stream=True, extra_body=extra)
            for ch in chunk.choices
        )
        assert text in SENTIMENTS, (model, text)


def test_logprobs_are_those_of_the_constrained_distribution(client):
    """Every reported alternative is a token the constraint allowed at that point: the first
    token of a choice among words starts one of them."""
    r = chat(client, "Pick a fruit.", logprobs=True, top_logprobs=5, max_tokens=8,
             extra_body={"structured_outputs": {"choice": ["banana", "cherry"]}})
    c = r.choices[0]
    assert c.message.content in ("banana", "cherry")
    first = c.logprobs.content[0]
    assert first.logprob <= 0
    allowed = [t.token for t in first.top_logprobs if t.logprob > -50]
    assert allowed and first.token in allowed
    for tok in allowed:
        assert "banana".startswith(tok) or "cherry".startswith(tok), allowed


def test_a_cut_inside_a_character_never_yields_a_replacement_character(client):
    """A regex forces a four-byte character; cuts by max_tokens at every token drop an incomplete
    character instead of writing U+FFFD, while logprobs' bytes keep every token's raw bytes."""
    target = "\U0001d11e\U0001d11e"  # 𝄞𝄞: each character is several byte tokens
    extra = {"structured_outputs": {"regex": target}}
    for n in range(1, 12):
        c = chat(client, "Write a clef.", max_tokens=n, logprobs=True, extra_body=extra).choices[0]
        raw = b"".join(bytes(t.bytes) for t in c.logprobs.content)
        assert "\ufffd" not in c.message.content
        assert c.message.content == raw.decode("utf-8", errors="ignore"), (n, raw)
        assert target.startswith(c.message.content)
        streamed = "".join(
            ch.delta.content or ""
            for chunk in chat(client, "Write a clef.", max_tokens=n, stream=True, extra_body=extra)
            for ch in chunk.choices
        )
        assert streamed == c.message.content
        if c.finish_reason == "stop":
            assert c.message.content == target
            break
    else:
        raise AssertionError("the regex never completed")


class Owner(BaseModel):
    name: str = Field(max_length=16)
    plan: Literal["free", "pro", "enterprise"]


class Ticket(BaseModel):
    title: str = Field(max_length=24)
    priority: Literal["low", "medium", "high"]
    tags: List[Annotated[str, Field(max_length=12)]] = Field(min_length=1, max_length=3)
    owner: Owner
    estimate_hours: int = Field(ge=1, le=40)


def test_parse_returns_a_pydantic_model(client):
    def one(job):
        model, s = job
        return client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": prompt("nested", s)}], response_format=Ticket,
            temperature=0, max_tokens=128,
        )

    for r in pooled(one, [(m, s) for m in ("smollm2", ADAPTER) for s in SUBJECTS[:3]]):
        msg = r.choices[0].message
        assert isinstance(msg.parsed, Ticket), msg.content
        assert msg.refusal is None
        assert Ticket.model_validate_json(msg.content) == msg.parsed


def bad_request(client, **kw):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "Hi", max_tokens=4, **kw)
    body = e.value.body
    assert body["type"] == "invalid_request_error", body
    return body


def test_refusals_name_the_parameter(client):
    assert bad_request(client, response_format={"type": "xml"})["param"] == "response_format.type"
    assert bad_request(client, extra_body={"response_format": "json"})["param"] == "response_format"
    assert bad_request(client, response_format={"type": "json_schema"})["param"].startswith("response_format.json_schema")
    no_name = {"type": "json_schema", "json_schema": {"schema": FLAT}}
    assert bad_request(client, response_format=no_name)["param"] == "response_format.json_schema.name"
    unsupported = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    body = bad_request(client, response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": unsupported}})
    assert body["param"] == "response_format.json_schema.schema"
    assert "uniqueItems" in body["message"]
    body = bad_request(client, extra_body={"structured_outputs": {"regex": "(unclosed"}})
    assert body["param"] == "structured_outputs.regex"
    # More than one constraint.
    assert bad_request(client, extra_body={"guided_regex": "a+", "guided_choice": ["a", "b"]})["param"]
    assert bad_request(client, response_format=json_schema_format("flat"), extra_body={"structured_outputs": {"regex": "a"}})["param"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm2", prompt="Hi", max_tokens=4, extra_body={"guided_grammar": "start: ("})
    assert e.value.body["param"] == "guided_grammar"


def test_wrong_methods_are_405_with_the_envelope(server):
    for method, path, allowed in [("GET", "/v1/chat/completions", "POST"), ("GET", "/v1/completions", "POST"),
                                  ("POST", "/v1/models", "GET"), ("DELETE", "/v1/models", "GET")]:
        req = urllib.request.Request(server.url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405, (method, path)
        assert allowed in e.value.headers["Allow"], (method, path, e.value.headers["Allow"])
        err = json.loads(e.value.read())["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "method_not_allowed", err
