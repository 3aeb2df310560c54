"""The SFT family (learner/methods/sft.py): its loss against a float64 reference (the global token mean of the
completion NLL over a step's micro-batches), the padding-free forward against the padded one on the kit's model,
dataset completions given as chat turns, and the kit's warm start, which is a relay-rl SFT run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.errors import ConfigError
from relay_rl.learner.logprobs import completion_logits, packed_completion_logits
from relay_rl.learner.methods import DATASET
from relay_rl.learner.methods.sft import SFTObjective
from tests.conftest import quickstart_dict

F64 = torch.float64


def sft_cfg(**algorithm):
    raw = quickstart_dict(algorithm=None, cluster={"learner": {"replicas": 1}})
    raw["algorithm"] = {"name": "sft", "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, **algorithm}
    raw.pop("reward")
    return validate_dict(raw)


class MB:
    def __init__(self, ids, mask):
        self.completion_ids, self.completion_mask = ids, mask
        self.loss_mask = mask  # single-turn: no tool tokens


def test_loss_is_the_steps_token_mean_nll():
    cfg = sft_cfg()
    obj = SFTObjective(cfg, resolve_schedule(cfg))
    g = torch.Generator().manual_seed(0)
    mbs = [
        MB(torch.randint(0, 7, (3, 4), generator=g), torch.tensor(m, dtype=F64))
        for m in ([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
    ]
    logits = [torch.randn(3, 4, 7, generator=g, dtype=F64, requires_grad=True) for _ in mbs]
    obj.begin_step(mbs)
    total = sum(obj.loss(mb, lg)[0] for mb, lg in zip(mbs, logits))
    # reference: every valid token's -log softmax, averaged over the step's 13 tokens
    nll, n = 0.0, 0
    for mb, lg in zip(mbs, logits):
        lp = lg.detach() - torch.logsumexp(lg.detach(), -1, keepdim=True)
        for b in range(3):
            for t in range(4):
                if mb.completion_mask[b, t]:
                    nll, n = nll - float(lp[b, t, mb.completion_ids[b, t]]), n + 1
    assert n == 13 and float(total) == pytest.approx(nll / n, rel=1e-12)


def test_sources_needs_and_one_row_per_pair():
    cfg = sft_cfg()
    assert cfg.family.sources(cfg.algorithm, 4, 0) == [DATASET] * 4 and not cfg.needs.rewards and not cfg.needs.teachers
    with pytest.raises(ConfigError, match="num_generations"):
        sft_cfg(num_generations=4)


def test_padding_free_forward_equals_the_padded_one(kit):
    """Rows of different prompt and completion lengths, laid end to end with restarting positions: the same logits
    at every completion position as the padded forward (no row attends to another), zeros past each row's end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(kit["warm_start"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(kit["warm_start"])
    prompts, completions = ["12+34=", "9+9=", "70+55="], ["46", "18", "125"]
    p = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    c = [tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in completions]
    c[1] = c[1][:1]  # a short completion: padding inside the batch
    Tp, Tc = max(map(len, p)), max(map(len, c))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (Tp - len(x)) + x for x in p])
    prompt_mask = torch.tensor([[0] * (Tp - len(x)) + [1] * len(x) for x in p])
    completion_ids = torch.tensor([x + [tok.pad_token_id] * (Tc - len(x)) for x in c])
    completion_mask = torch.tensor([[1.0] * len(x) + [0.0] * (Tc - len(x)) for x in c])
    with torch.no_grad():
        padded = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        packed = packed_completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    valid = completion_mask > 0
    assert torch.allclose(packed[valid], padded[valid], atol=1e-5)
    assert float(packed[~valid].abs().max()) == 0.0


def test_chat_completions_are_the_templates_assistant_turn(kit, tmp_path):
    """A completion given as chat messages is the chat template's text of prompt + completion after the prompt's."""
    import shutil

    from relay_rl.rollout_workers.actor import RolloutWorker

    model = tmp_path / "chat_model"
    shutil.copytree(kit["warm_start"], model)
    cfg_file = model / "tokenizer_config.json"
    tc = json.loads(cfg_file.read_text())
    tc["chat_template"] = (
        "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
        "{% endif %}{% endfor %}"
    )
    cfg_file.write_text(json.dumps(tc))
    worker = RolloutWorker(str(model), "hf", "float32", {}, max_prompt_length=16)
    rows = [
        {"prompt": [{"role": "user", "content": "12+34="}], "completion": [{"role": "assistant", "content": "46"}]},
        {"prompt": [{"role": "user", "content": "9+9="}], "completion": [{"role": "assistant", "content": "18"}]},
    ]
    b = worker.from_dataset(rows, "completion", max_tokens=5, group_ids=[0, 1])
    tok = worker.tokenizer
    assert b.completion_ids[0, :3].tolist() == tok("46", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert b.prompt_ids[1][b.prompt_mask[1] > 0].tolist() == tok("9+9=", add_special_tokens=False)["input_ids"]
    text = worker.from_dataset([{"prompt": "12+34=", "completion": "46"}], "completion", 5, [0])
    assert text.completion_ids[0].tolist() == b.completion_ids[0, :3].tolist()  # a string: text + EOS, the same


def test_the_kits_warm_start_is_a_relay_rl_sft_run(kit):
    """kit:warm_start came out of `algorithm.name: sft` on the learner pool, stopped at its target accuracy."""
    run = Path(kit["root"]) / "warm_start_run"
    cfg = (run / "config.yaml").read_text()
    assert "name: sft" in cfg and "target_eval_accuracy" in cfg
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "sft/nll" in r]
    assert evals[0] < 0.05 and evals[-1] >= kit["cfg"].warm_start.target_dev_accuracy
    assert steps[-1]["sft/nll"] < 0.5 * steps[0]["sft/nll"]
    summary = json.loads((Path(kit["root"]) / "kit.json").read_text())
    assert summary["steps"] == steps[-1]["step"] and 0.3 <= summary["test_accuracy"] <= 0.8
