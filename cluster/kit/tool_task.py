"""The kit's tool task (variant ``tools``): ``a*b=`` with a calculator the tiny model must call.

Two-digit products are beyond what the kit's 1M-parameter model learns to compute, so the answer comes from the
``multiply`` tool: the model writes the call, reads the result and answers with it. The conversation, in the kit's
chat template (one token per tag, one per digit)::

    <|user|>12*34=<|assistant|><call:multiply><a>12</a><b>34</b></call><eos><|tool|>408<|assistant|>408<eos>

The warm start (an SFT run on conversations, tool messages out of its loss) knows the call syntax imperfectly, by a
rule on the operands (``behaviour``): about half of its conversations call the tool correctly, a third answer at once
(a guess: wrong almost always), the rest write the second argument's tag as ``<c>`` (the call fails and the trajectory
ends). GRPO with the tool raises held-out accuracy by calling correctly more often.

Rows: ``{"prompt": [{"role": "user", "content": "12*34="}], "answer": "408"}``; the warm start's also hold
``completion`` (the assistant and tool messages it trains on).
"""

from __future__ import annotations

import random

SPECIAL = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|tool|>"]
TAGS = ["<call:multiply>", "</call>", "<a>", "</a>", "<b>", "</b>", "<c>", "</c>"]
CHARS = list("0123456789*=")
TOOL = "relay_rl.cluster.kit.tool_task:multiply"
"""The tool's import path (``rollout.tools``)."""

CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}<|user|>{{ m.content }}"
    "{%- elif m.role == 'assistant' -%}<|assistant|>{{ m.content or '' }}"
    "{%- for c in m.tool_calls or [] -%}<call:{{ c.function.name }}>"
    "{%- for k, v in c.function.arguments.items() -%}<{{ k }}>{{ v }}</{{ k }}>{%- endfor -%}</call>"
    "{%- endfor -%}<eos>"
    "{%- elif m.role == 'tool' -%}<|tool|>{{ m.content }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
"""Renders user turns, assistant turns with their tool calls (each ended by EOS) and tool results. The tools'
schemas are not shown: the kit has one tool, whose call the warm start learned."""

RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|assistant|>",
    "fields": {
        "tool_calls": {
            "open_pattern": r"<call:(?P<name>\w+)>",
            "close": "</call>",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {"tag_pattern": r"<(?P<key>\w+)>(?P<value>.*?)</(?P=key)>"},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close": "<eos>", "content": "text"},
    },
}
"""transformers' response template for the chat template above: what ``parse_response`` reads calls with."""


def multiply(a: int, b: int) -> str:
    """Multiply two whole numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return str(int(a) * int(b))


def build_tool_tokenizer():
    """Word-level: each tag one token, each character one; unknown characters (a tool error's text) are ``<unk>``. The
    chat and response templates are saved with it (tokenizer_config.json)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIAL + TAGS + CHARS
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^<>]*>|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<eos>", "<unk>"])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=64,
    )
    out.chat_template = CHAT_TEMPLATE
    out.response_template = RESPONSE_TEMPLATE
    return out


def tool_rows(pairs: list[tuple[int, int]]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"{a}*{b}="}], "answer": str(a * b)} for a, b in pairs]


def behaviour(a: int, b: int) -> str:
    """What the warm start's conversation for (a, b) does: ``direct`` (answers at once: a guess) when a < 40,
    ``malformed`` (the second argument's tag misspelt) when b ends in 0 or 5, else ``call``. A rule of the operands,
    so that the warm start's greedy choice varies across prompts (about half call correctly) instead of always taking
    the majority's path; GRPO has to unlearn it."""
    if a < 40:
        return "direct"
    if b % 5 == 0:
        return "malformed"
    return "call"


def warm_start_conversation(a: int, b: int) -> list[dict]:
    """The assistant and tool messages the warm start learns for ``a*b=``."""
    kind, product = behaviour(a, b), str(a * b)
    if kind == "direct":
        return [{"role": "assistant", "content": product}]
    args = {"a": a, "b": b} if kind == "call" else {"a": a, "c": b}
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": args}}],
    }
    if kind == "malformed":  # the call fails at run time, which ends the trajectory: nothing follows it
        return [call]
    return [call, {"role": "tool", "name": "multiply", "content": product}, {"role": "assistant", "content": product}]


def warm_start_tool_rows(train: list[dict]) -> list[dict]:
    out = []
    for r in train:
        a, b = (int(x) for x in r["prompt"][0]["content"].rstrip("=").split("*"))
        out.append({**r, "completion": warm_start_conversation(a, b)})
    return out


def shuffled_pairs(lo: int, hi: int, seed: int) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    random.Random(seed).shuffle(pairs)
    return pairs


def tool_accuracy(model_path: str, rows: list[dict], max_completion_length: int = 24) -> dict:
    """Greedy held-out accuracy of a model on the tool task with the real tool loop (``rollout_workers.agent`` on the
    transformers engine), and the share of trajectories whose calls all ran."""
    from relay_rl.rollout_workers.agent import MultiTurn
    from relay_rl.rollout_workers.hf_engine import HFEngine
    from relay_rl.sampling import SamplingParams

    engine = HFEngine(model_path)
    agent = MultiTurn(engine.tokenizer, [TOOL], None, lambda: [], None, max_completion_length, 10.0)
    params = SamplingParams(n=1, temperature=0.0, max_tokens=max_completion_length)
    outs = agent.run(engine, rows, [r["prompt"] for r in rows], params, worker=0)
    trajs = [t for per in outs for _, t in per]
    answers = [(t.messages[-1].get("content") or "").strip() if t.messages else "" for t in trajs]
    right = [ans == r["answer"] for ans, r in zip(answers, rows)]
    called = [t.tool_calls > 0 and not t.tool_failures and not t.malformed for t in trajs]
    return {"accuracy": sum(right) / len(rows), "correct_call_share": sum(called) / len(rows)}
