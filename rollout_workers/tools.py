"""Tools and environments on TRL's contract, and what the chat template must do for them.

A tool is a plain function with type hints and a docstring (its JSON schema, as transformers' chat templates take
it: ``transformers.utils.get_json_schema``), named by import path in ``rollout.tools``. An environment
(``rollout.environment_factory``, TRL's ``environment_factory``) is a class: ``reset(**row)`` starts a trajectory and
may return an observation (appended to the last prompt message); its other public methods are tools;
``get_reward()``, when it has one, is a reward column of its own. Tool calls are parsed from the model's output with
the tokenizer's ``response_template`` (transformers' ``parse_response``); a tool's result goes back as a ``tool``
message whose tokens are the chat template's rendering of that message, never a re-tokenisation of the model's text.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path

RESERVED = ("reset", "get_reward")  # an environment's methods that are not tools


def import_object(path: str, what: str):
    """``package.module:name`` -> the object (ValueError naming what failed)."""
    if ":" not in path:
        raise ValueError(f"{what} {path!r}: use an import path 'package.module:name'")
    module, attr = path.split(":", 1)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (ImportError, or the module failing on import)
        raise ValueError(f"{what} {path!r}: module {module!r} cannot be imported ({type(e).__name__}: {e})") from None
    if not hasattr(mod, attr):
        raise ValueError(f"{what} {path!r}: module {module} ({getattr(mod, '__file__', '?')}) has no {attr!r}")
    return getattr(mod, attr)


def tool_schema(fn: Callable, what: str) -> dict:
    """The function's JSON schema from its signature and docstring (ValueError saying what to add)."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:  # noqa: BLE001  (DocstringParsingException, TypeHintParsingException)
        raise ValueError(
            f"{what} {getattr(fn, '__name__', fn)!r}: no tool schema ({e}). A tool needs a type hint on every "
            "argument and a Google-style docstring with an Args: section describing each"
        ) from None


def environment_methods(cls) -> list[str]:
    """The public methods of an environment class that are its tools."""
    return [
        n
        for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
        if not n.startswith("_") and n not in RESERVED
    ]


def load_tools(paths: list[str]) -> list[Callable]:
    """``rollout.tools`` -> the functions, each checked to have a schema."""
    tools = []
    for i, path in enumerate(paths):
        fn = import_object(path, f"rollout.tools[{i}]")
        if not callable(fn):
            raise ValueError(f"rollout.tools[{i}] {path!r} is a {type(fn).__name__}, not a function")
        tool_schema(fn, f"rollout.tools[{i}]")
        tools.append(fn)
    return tools


def load_environment(path: str):
    """``rollout.environment_factory`` -> the factory (a class, or a function returning an instance)."""
    factory = import_object(path, "rollout.environment_factory")
    if not callable(factory):
        raise ValueError(f"rollout.environment_factory {path!r} is a {type(factory).__name__}, not a class")
    return factory


def load_agent_program(path: str):
    """``rollout.agent_program`` -> the function (ValueError naming what failed)."""
    fn = import_object(path, "rollout.agent_program")
    if not callable(fn):
        raise ValueError(f"rollout.agent_program {path!r} is a {type(fn).__name__}, not a function")
    return fn


def check_environment(factory, path: str):
    """Construct one instance (TRL probes one too) and check its contract; returns the instance."""
    what = f"rollout.environment_factory {path!r}"
    try:
        env = factory()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{what} cannot be constructed with no arguments ({type(e).__name__}: {e})") from None
    if not callable(getattr(env, "reset", None)):
        raise ValueError(f"{what}: an environment needs a reset(**row) method (it starts each trajectory)")
    methods = environment_methods(type(env))
    if not methods:
        raise ValueError(f"{what}: {type(env).__name__} has no public methods besides reset: it offers no tools")
    for name in methods:
        tool_schema(getattr(env, name), f"{what}: method")
    return env


# ----------------------------------------------------------------------------------------------------------------
# the chat template
# ----------------------------------------------------------------------------------------------------------------
def set_response_template(tokenizer, path: str | None) -> None:
    """Give ``tokenizer`` the response template that parses tool calls: ``path`` (a JSON file), else its own (from its
    tokenizer_config.json), else TRL's for the chat templates it knows (when trl is installed). ValueError if none."""
    if path:
        tokenizer.response_template = json.loads(Path(path).read_text())
        return
    if getattr(tokenizer, "response_template", None) is not None:
        return
    try:
        from trl.chat_template_utils import add_response_schema

        add_response_schema(tokenizer)
    except Exception:  # noqa: BLE001  (trl missing, or a chat template it does not know)
        pass
    if getattr(tokenizer, "response_template", None) is None:
        raise ValueError(
            "the tokenizer has no response_template, so tool calls cannot be parsed from the model's output: set "
            "rollout.response_template to a JSON file holding transformers' response template for this chat "
            "template (https://huggingface.co/docs/transformers/main/en/chat_response_parsing), or install trl, "
            "which knows the templates of Qwen, Llama 3, GPT-OSS, Gemma 4 and others"
        )


def check_chat_template(tokenizer) -> None:
    """The chat template renders a whole tool exchange (the call's name and arguments, the tool's content) and is
    prefix-preserving (a conversation renders as its earlier part, then the rest): what token-exact multi-turn
    trajectories rely on. ValueError naming what fails."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: multi-turn rollouts need one that renders tool calls")
    call = [{"type": "function", "function": {"name": "qzt", "arguments": {"qzk": "qzv"}}}]  # short: char tokenizers
    head = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": call}]
    tool = [{"role": "tool", "name": "qzt", "content": "qzr"}]
    text = tokenizer.apply_chat_template(head + tool, tokenize=False)
    missing = [s for s in ("qzt", "qzk", "qzv", "qzr") if s not in text]
    if missing:
        raise ValueError(
            "the chat template drops part of a tool exchange (of a call's name, its argument and value, and the "
            f"tool's result, {', '.join(missing)} went missing from its rendering): "
            "use a model whose template renders assistant tool_calls and tool messages"
        )
    a = tokenizer.apply_chat_template(head, tokenize=True, return_dict=False)
    b = tokenizer.apply_chat_template(head + tool, tokenize=True, return_dict=False, add_generation_prompt=True)
    if list(b[: len(a)]) != list(a):
        raise ValueError(
            "the chat template is not prefix-preserving (a conversation with a tool message appended renders its "
            "earlier part differently), so the tokens the model sampled cannot be kept as they are: use a "
            "training chat template that is (TRL's get_training_chat_template makes one for known models)"
        )


def tool_suffix_ids(tokenizer, tool_messages: list[dict]) -> list[int]:
    """The token ids the chat template puts after an assistant turn that ended in tool calls: the tool messages and
    the next assistant turn's header. Rendered on a stand-in conversation and cut after its end-of-turn token, so the
    model's own tokens of the real turn are never re-tokenised."""
    call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    head = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": call}]
    a = list(tokenizer.apply_chat_template(head, tokenize=True, return_dict=False))
    b = list(
        tokenizer.apply_chat_template(
            head + tool_messages, tokenize=True, return_dict=False, add_generation_prompt=True
        )
    )
    ends = [i for i, t in enumerate(a) if t == tokenizer.eos_token_id]
    if ends:  # templates that write "<eos>\n" after a turn: the model stopped at the EOS
        a = a[: ends[-1] + 1]
    if b[: len(a)] != a:
        raise ValueError("the chat template renders the turn before a tool message differently (not prefix-preserving)")
    return b[len(a) :]


def parse_turn(tokenizer, ids: list[int], prefix_ids: list[int], tools: list) -> tuple[dict, bool]:
    """One assistant turn's message from its token ids, and whether it was malformed (the parser failed, or a call
    lacks a name): a malformed turn is kept as plain text and ends the trajectory, as in TRL."""
    if not ids:  # nothing sampled (the budget was spent)
        return {"role": "assistant", "content": ""}, False
    try:
        msg = tokenizer.parse_response(ids, prefix=prefix_ids, tools=tools)
    except Exception:  # noqa: BLE001  (the model's output does not fit the template)
        return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}, True
    calls = msg.get("tool_calls") or []
    bad = not isinstance(calls, list) or any(
        not isinstance(c, dict) or not isinstance((c.get("function") or c).get("name"), str) for c in calls
    )
    if bad:
        return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}, True
    for c in calls:
        f = c.get("function") or c
        if f.get("arguments") is None:
            f["arguments"] = {}
    return msg, False
