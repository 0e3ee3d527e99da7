"""Tool calling through the official OpenAI SDK against the real server: `tool_choice`
required / named / auto / none, the SDK's `parse` and `stream` helpers assembling calls, a
follow-up turn carrying the tool's result, and the strict refusals (400 with `param`)."""

import concurrent.futures
import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from typing import Literal

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 32}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = "What is the weather like in Paris right now?"


def chat(client, content=ASK, messages=None, model="smollm2", **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 96)
    messages = messages or [{"role": "user", "content": content}]
    return client.chat.completions.create(model=model, messages=messages, **kw)


def check_calls(choice, names=None):
    """The choice is only tool calls, each naming a tool and with arguments its schema accepts."""
    assert choice.finish_reason == "tool_calls", (choice.finish_reason, choice.message)
    msg = choice.message
    assert msg.content is None, msg.content
    assert msg.tool_calls, msg
    for call in msg.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_") and len(call.id) > len("call_")
        assert call.function.name in (names or PARAMS), call.function.name
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
    assert len({c.id for c in msg.tool_calls}) == len(msg.tool_calls)
    return msg.tool_calls


def named(name):
    return {"type": "function", "function": {"name": name}}


def test_required_and_named_calls_validate(client):
    """Base and adapter in one batch; `required` may make several calls unless
    `parallel_tool_calls` is false, a named choice calls only that function."""
    prompts = [ASK, "What time is it in Tokyo?", "Tell me about the weather in Rome in fahrenheit."]
    jobs = [("smollm2", p, "required", True) for p in prompts]
    jobs += [("smollm2", prompts[0], named("get_time"), False), ("smollm2", prompts[1], "required", False)]
    jobs += [("rand-r8-qv", prompts[2], "required", True), ("rand-r8-qv", prompts[1], named("get_weather"), False)]

    def one(job):
        model, p, choice, parallel = job
        return job, chat(client, p, model=model, tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel).choices[0]

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(one, jobs))
    for (model, p, choice, parallel), c in results:
        calls = check_calls(c, None if choice == "required" else [choice["function"]["name"]])
        if not parallel:
            assert len(calls) == 1, (model, p, choice, calls)


def test_auto_on_a_greeting_answers_in_text(client):
    c = chat(client, "Hello! How are you today?", tools=TOOLS, tool_choice="auto", max_tokens=24).choices[0]
    assert not c.message.tool_calls, c.message.tool_calls
    assert c.message.content
    assert c.finish_reason in ("stop", "length")
    # `none` never calls, even when asked for something a tool does.
    c = chat(client, tools=TOOLS, tool_choice="none", max_tokens=24).choices[0]
    assert not c.message.tool_calls and c.message.content and c.finish_reason in ("stop", "length")


def test_the_sdk_stream_helper_assembles_streamed_calls(client):
    full = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).choices[0]
    want = check_calls(full)
    done = []
    with client.chat.completions.stream(model="smollm2", messages=[{"role": "user", "content": ASK}], tools=TOOLS,
                                        tool_choice="required", parallel_tool_calls=False, temperature=0,
                                        max_tokens=96) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.done":
                done.append((event.name, event.arguments))
            if event.type == "content.delta":
                raise AssertionError(f"content in a tool-call stream: {event.delta!r}")
        final = stream.get_final_completion().choices[0]
    calls = check_calls(final)
    got = [(c.function.name, c.function.arguments) for c in calls]
    assert got == [(c.function.name, c.function.arguments) for c in want], "greedy: streamed equals non-streamed"
    assert done == got


def test_raw_stream_sends_id_and_name_first_then_argument_fragments(client):
    stream = chat(client, tools=TOOLS, tool_choice=named("get_weather"), stream=True)
    seen, args, finish = {}, {}, None
    for chunk in stream:
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            assert not ch.delta.content, ch.delta.content
            for d in ch.delta.tool_calls or []:
                if d.index not in seen:
                    assert d.id and d.id.startswith("call_") and d.type == "function", d
                    assert d.function.name == "get_weather", d
                    seen[d.index] = d.id
                    args[d.index] = d.function.arguments or ""
                else:
                    assert d.id is None and d.function.name is None, d
                    args[d.index] += d.function.arguments or ""
    assert finish == "tool_calls"
    assert list(seen) == list(range(len(seen))) and seen, seen  # parallel calls of one function are allowed
    for a in args.values():
        jsonschema.validate(json.loads(a), PARAMS["get_weather"])


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


def test_parse_with_a_pydantic_tool(client):
    r = client.chat.completions.parse(
        model="smollm2", messages=[{"role": "user", "content": ASK}], tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=96,
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_follow_up_with_the_tool_result(client):
    first = chat(client, tools=TOOLS, tool_choice=named("get_weather"), parallel_tool_calls=False)
    call = check_calls(first.choices[0])[0]

    def turn(result, **kw):
        messages = [
            {"role": "user", "content": ASK},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        return chat(client, messages=messages, tools=TOOLS, **kw)

    result = json.dumps({"temperature": 18, "unit": "celsius", "sky": "sunny"})
    r = turn(result, tool_choice="none", max_tokens=32)
    c = r.choices[0]
    assert c.message.content and not c.message.tool_calls
    assert c.finish_reason in ("stop", "length")
    # The result reaches the prompt: a longer result makes a longer prompt.
    longer = turn(json.dumps({"temperature": 18, "unit": "celsius", "sky": "sunny", "wind": "strong from the west"}),
                  tool_choice="none", max_tokens=1)
    assert longer.usage.prompt_tokens > r.usage.prompt_tokens > first.usage.prompt_tokens
    # `auto` may answer or call again; either way the answer is well formed.
    c = turn(result, tool_choice="auto", max_tokens=64).choices[0]
    if c.message.tool_calls:
        check_calls(c)
    else:
        assert c.message.content and c.finish_reason in ("stop", "length")


def refusal(client, **kw):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=4, **kw)
    body = e.value.body
    assert body["type"] == "invalid_request_error", body
    return body["param"]


def test_strict_refusals_name_the_parameter(client):
    assert refusal(client, tools=TOOLS, tool_choice=named("get_stock_price")).startswith("tool_choice")
    assert refusal(client, tool_choice="required").startswith("tool_choice")
    assert refusal(client, tool_choice=named("get_weather")).startswith("tool_choice")
    assert refusal(client, tools=TOOLS, tool_choice="sometimes").startswith("tool_choice")
    assert refusal(client, extra_body={"tools": {"type": "function"}}) == "tools"
    assert refusal(client, tools=[{"type": "retrieval"}]).startswith("tools[0]")
    bad_name = {"type": "function", "function": {"name": "get weather!", "parameters": {"type": "object"}}}
    assert refusal(client, tools=[WEATHER, bad_name]).startswith("tools[1].function.name")
    unsupported = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}}
    assert refusal(client, tools=[unsupported], tool_choice="required") == "tools[0].function.parameters"
    # Messages, as OpenAI checks them.
    assert refusal(client, messages=[{"role": "user"}]) == "messages[0].content"
    assert refusal(client, messages=[{"role": "user", "content": 42}]) == "messages[0].content"
    assert refusal(client, messages=[{"role": "system", "content": {"text": "x"}}, {"role": "user", "content": "Hi"}]) \
        == "messages[0].content"
    assert refusal(client, messages=[{"role": "user", "content": "Hi", "name": 5}]) == "messages[0].name"
    no_id = [{"role": "user", "content": ASK}, {"role": "tool", "content": "18 degrees"}]
    assert refusal(client, messages=no_id).startswith("messages[1]")
