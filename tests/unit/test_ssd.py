"""SSD (docs/methods/ssd.md, tests/README.md's reference checks): the loss is the token-mean NLL of the model's own
samples (float64 reference, values and gradients, at temperature 1 whatever the sampling temperature), divided by GA;
``filter_empty`` drops "" and single-line completions under 10 characters, which then train nothing."""

import pytest
import torch

from relay_rl.learner.methods.ssd import SSDObjective, assemble, is_empty
from tests.conftest import quickstart_dict


def _cfg(**algorithm):
    from relay_rl.cluster.config import validate_dict

    raw = quickstart_dict(algorithm=None, rollout={"temperature": 0.6, "top_k": 20, "top_p": 0.95})
    raw["algorithm"] = {"name": "ssd", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, **algorithm}
    raw.pop("reward", None)
    return validate_dict(raw)


class _MB:
    def __init__(self, ids, mask):
        self.completion_ids, self.completion_mask = ids, mask


def test_the_loss_is_the_token_mean_nll_over_ga():
    from relay_rl.cluster.config import resolve_schedule

    cfg = _cfg()
    sched = resolve_schedule(cfg)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)  # ragged, one row empty
    loss, stats = SSDObjective(cfg, sched).loss(_MB(ids, mask), logits)
    # independent reference: log-softmax by hand, the sampled token's log-prob, -sum / count, / GA
    ref_logits = logits.detach().clone().requires_grad_(True)
    logp = ref_logits - torch.logsumexp(ref_logits, dim=-1, keepdim=True)
    picked = torch.stack([torch.stack([logp[b, t, ids[b, t]] for t in range(4)]) for b in range(3)])
    want = -(picked * mask).sum() / mask.sum() / sched.GA
    assert sched.GA == 2 and cfg.rollout.temperature == 0.6  # sampling temperature: not in the loss
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    loss.backward()
    want.backward()
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-12)
    assert stats["ssd/nll"][2] == 4.0 and stats["ssd/nll"][1] / 4.0 == pytest.approx(float(want) * 2, rel=1e-9)


def test_a_micro_batch_with_nothing_kept_adds_zero():
    cfg = _cfg()
    from relay_rl.cluster.config import resolve_schedule

    loss, _ = SSDObjective(cfg, resolve_schedule(cfg)).loss(
        _MB(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), torch.randn(2, 3, 5)
    )
    assert float(loss) == 0.0


@pytest.mark.parametrize(
    "text, empty",
    [
        ("", True),
        ("   \n\t ", True),
        ("short", True),
        ("123456789", True),
        ("1234567890", False),
        ("a\nb", False),
        ("  padded  \n", True),
    ],
)
def test_filter_empty(text, empty):
    assert is_empty(text) is empty


def test_assemble_masks_the_filtered_rows():
    from relay_rl.batch import Batch

    n = 4
    batch = Batch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.full((n, 3), 5),
        completion_mask=torch.ones(n, 3),
        behaviour_logprobs=torch.zeros(n, 3),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.arange(n),
        truncated=torch.zeros(n, dtype=torch.bool),
        prompts=["p"] * n,
        completions=["", "a long enough answer", "tiny", "two\nlines"],
        columns={},
    )
    out, stats = assemble(batch, _cfg().algorithm, None, seed=0)
    kept = {c: float(m.sum()) for c, m in zip(out.completions, out.completion_mask)}
    assert kept == {"": 0.0, "a long enough answer": 3.0, "tiny": 0.0, "two\nlines": 3.0}
    assert stats["ssd/filtered_ratio"] == 0.5
    out, stats = assemble(batch, _cfg(filter_empty=False).algorithm, None, seed=0)
    assert float(out.completion_mask.sum()) == 12.0 and stats["ssd/filtered_ratio"] == 0.0
