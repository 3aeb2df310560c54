"""Agent programs for the tests (``rollout.agent_program``): ordinary OpenAI-client code, as a user writes it."""

from __future__ import annotations

import json

from openai import OpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two whole numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]


def calculator_agent(base_url: str, row: dict) -> float:
    """Ask the policy, run its multiply calls here, send the results back; 1.0 when its final answer is right."""
    client = OpenAI(base_url=base_url, api_key="relay-rl", max_retries=0)
    messages = list(row["prompt"])
    for _ in range(3):
        reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        msg = reply.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        if not msg.tool_calls:
            return 1.0 if (msg.content or "").strip() == row["answer"] else 0.0
        for call in msg.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": multiply(call.function.arguments)})
    return 0.0


def crashing_agent(base_url: str, row: dict) -> float:
    client = OpenAI(base_url=base_url, api_key="relay-rl", max_retries=0)
    client.chat.completions.create(model="policy", messages=row["prompt"])
    raise RuntimeError("the agent's own database is down")


def silent_agent(base_url: str, row: dict) -> float:
    return 1.0


def multiply(arguments: str) -> str:
    """The program's own tool: the sampled arguments may be anything."""
    try:
        args = json.loads(arguments)
        return str(int(args["a"]) * int(args["b"]))
    except (ValueError, KeyError, TypeError):
        return "error"


def rewriting_agent(base_url: str, row: dict) -> float:
    """Calls twice, the second time with a conversation that does not extend the first (its own summary instead)."""
    client = OpenAI(base_url=base_url, api_key="relay-rl", max_retries=0)
    client.chat.completions.create(model="policy", messages=row["prompt"])
    again = [{"role": "user", "content": row["prompt"][0]["content"]}]
    reply = client.chat.completions.create(model="policy", messages=again, max_tokens=4)
    return 1.0 if (reply.choices[0].message.content or "").strip() == row["answer"] else 0.0
