"""Online DPO and XPO (learner/methods/dpo.py, docs/methods/preference.md and tests/README.md's reference checks,
"Preference") against float64 references: the sigmoid and IPO losses and their gradients, the pair selection (ties, None
scores, the missing-EOS penalty, XPO's policy sample first), the XPO bonus (alpha 0 is online DPO on the same pair), the
beta / alpha schedules, and the config rules. No Ray, no model."""

from __future__ import annotations

import math

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.errors import ConfigError
from relay_rl.learner.methods.dpo import PreferenceObjective, assemble, choose, dpo_loss, scheduled
from tests.conftest import quickstart_dict

F64 = torch.float64


def cfg_of(name="online_dpo", **algorithm):
    raw = quickstart_dict(algorithm=None, cluster={"learner": {"replicas": 1}})
    raw["algorithm"] = {"name": name, "per_device_train_batch_size": 4, **algorithm}
    return validate_dict(raw)


# ----------------------------------------------------------------------------------------------------------------
def test_sigmoid_at_zero_is_log2_with_slope_minus_half_beta():
    for beta in (0.1, 0.5, 2.0):
        h = torch.zeros(1, dtype=F64, requires_grad=True)
        loss = dpo_loss(h, beta, "sigmoid")
        (g,) = torch.autograd.grad(loss.sum(), h)
        assert float(loss) == pytest.approx(math.log(2), rel=1e-12)
        assert float(g) == pytest.approx(-beta / 2, rel=1e-12)


def test_losses_and_gradients_against_closed_forms():
    h = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=F64, requires_grad=True)
    beta = 0.4
    sig = dpo_loss(h, beta, "sigmoid")
    (gs,) = torch.autograd.grad(sig.sum(), h)
    for x, l_, g in zip(h.tolist(), sig.tolist(), gs.tolist()):
        assert l_ == pytest.approx(math.log(1 + math.exp(-beta * x)), rel=1e-12)
        assert g == pytest.approx(-beta / (1 + math.exp(beta * x)), rel=1e-12)
    ipo = dpo_loss(h, beta, "ipo")
    (gi,) = torch.autograd.grad(ipo.sum(), h)
    for x, l_, g in zip(h.tolist(), ipo.tolist(), gi.tolist()):
        assert l_ == pytest.approx((x - 1 / (2 * beta)) ** 2, rel=1e-12)
        assert g == pytest.approx(2 * (x - 1 / (2 * beta)), rel=1e-12)


def test_ipo_is_minimised_at_one_over_two_beta():
    beta = 0.25
    grid = torch.linspace(0, 4, 4001, dtype=F64)
    assert float(grid[dpo_loss(grid, beta, "ipo").argmin()]) == pytest.approx(1 / (2 * beta), abs=1e-3)


@pytest.mark.parametrize(
    "first, second, want",
    [
        (1.0, 0.0, 0),
        (0.0, 1.0, 1),
        (0.5, 0.5, 0),
        (math.nan, 0.0, 1),
        (0.0, math.nan, 0),
        (math.nan, math.nan, None),
        (-3.0, math.nan, 0),
    ],
)
def test_choice_with_ties_and_none(first, second, want):
    assert choose(first, second) == want


def test_schedules():
    assert [scheduled([0.1, 0.05, 0.01], e) for e in range(5)] == [0.1, 0.05, 0.01, 0.01, 0.01]
    assert scheduled([0.3], 7) == 0.3
    assert cfg_of(beta=0.2).algorithm.beta == [0.2] and cfg_of("xpo", alpha=0.0).algorithm.alpha == [0.0]


# ----------------------------------------------------------------------------------------------------------------
def pairs_batch(rewards, truncated=None, frozen=None, groups=None):
    n = len(rewards)
    return Batch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long),
        prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.arange(n).unsqueeze(1),
        completion_mask=torch.ones(n, 1),
        behaviour_logprobs=torch.zeros(n, 1),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.tensor(groups or [i // 2 for i in range(n)]),
        truncated=torch.tensor(truncated or [False] * n),
        frozen_sample=torch.tensor(frozen or [False] * n),
        rewards=torch.tensor(rewards, dtype=torch.float32).unsqueeze(1),
        completions=[str(i) for i in range(n)],
    )


def test_assemble_orders_chosen_then_rejected_and_drops_pairs_without_preference():
    b = pairs_batch([0.0, 1.0, 1.0, 1.0, math.nan, math.nan, math.nan, 0.2])
    out, stats = assemble(b, cfg_of().algorithm, [1.0], seed=0)
    pairs = {tuple(out.completions[i : i + 2]): tuple(out.preference[i : i + 2].tolist()) for i in range(0, 8, 2)}
    assert pairs == {("1", "0"): (1.0, -1.0), ("2", "3"): (1.0, -1.0), ("4", "5"): (0.0, 0.0), ("7", "6"): (1.0, -1.0)}
    assert stats["pairs/without_preference"] == 0.25 and stats["pairs/tied"] == 0.25


def test_drop_ties_leaves_tied_pairs_out():
    b = pairs_batch([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, math.nan, 0.0], frozen=[False, True] * 4)
    out, stats = assemble(b, cfg_of("xpo", drop_ties=True).algorithm, [1.0], seed=0)
    pairs = {tuple(out.completions[i : i + 2]): tuple(out.preference[i : i + 2].tolist()) for i in range(0, 8, 2)}
    assert pairs == {("0", "1"): (0.0, 0.0), ("2", "3"): (0.0, 0.0), ("5", "4"): (1.0, -1.0), ("7", "6"): (1.0, -1.0)}
    assert stats["pairs/tied"] == 0.5 and stats["pairs/without_preference"] == 0.5
    out, stats = assemble(b, cfg_of("xpo").algorithm, [1.0], seed=0)  # TRL's rule: the policy's sample wins ties
    assert stats["pairs/without_preference"] == 0.0 and (out.preference != 0).all()


def test_missing_eos_penalty_decides_the_pair():
    b = pairs_batch([1.0, 0.5], truncated=[True, False])
    out, _ = assemble(b, cfg_of().algorithm, [1.0], seed=0)
    assert out.completions == ["0", "1"]  # 1.0 against 0.5
    out, _ = assemble(b, cfg_of(missing_eos_penalty=1.0).algorithm, [1.0], seed=0)
    assert out.completions == ["1", "0"]  # 0.0 against 0.5


def test_xpo_ties_go_to_the_policy_sample():
    b = pairs_batch([1.0, 1.0], frozen=[True, False])  # the reference's sample came first in the batch
    out, stats = assemble(b, cfg_of("xpo").algorithm, [1.0], seed=0)
    assert out.frozen_sample.tolist() == [False, True] and out.preference.tolist() == [1.0, -1.0]
    assert stats["pairs/reference_chosen"] == 0.0
    out, _ = assemble(pairs_batch([0.0, 1.0], frozen=[False, True]), cfg_of("xpo").algorithm, [1.0], seed=0)
    assert out.frozen_sample.tolist() == [True, False]  # the reference's better sample is chosen


# ----------------------------------------------------------------------------------------------------------------
class MB:
    def __init__(self, ids, mask, ref, pref, frozen, epoch=0):
        self.completion_ids, self.completion_mask, self.ref_logprobs = ids, mask, ref
        self.preference, self.frozen_sample = pref, frozen
        self.truncated = torch.zeros(len(ids), dtype=torch.bool)
        self.info = {"epoch": epoch}

    def __len__(self):
        return len(self.completion_ids)


def _mb(epoch=0):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (4, 3), generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1.0]], dtype=F64)
    ref = -torch.rand(4, 3, generator=g, dtype=F64)
    return MB(
        ids, mask, ref, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64), torch.tensor([False, True, True, False]), epoch
    )


def reference(logits, mb, beta, loss_type, alpha=None):
    """The preference loss by loops: sequence sums of log softmax at T = 1, h per pair, the loss averaged over the
    pairs."""
    lp = logits - torch.logsumexp(logits, -1, keepdim=True)
    seq = [
        sum(float(lp[i, t, mb.completion_ids[i, t]]) for t in range(3) if mb.completion_mask[i, t]) for i in range(4)
    ]
    ref = [float((mb.ref_logprobs[i] * mb.completion_mask[i]).sum()) for i in range(4)]
    total = 0.0
    for p in (0, 2):
        h = (seq[p] - ref[p]) - (seq[p + 1] - ref[p + 1])
        loss = math.log(1 + math.exp(-beta * h)) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2
        if alpha is not None:
            loss += alpha * (seq[p + 1] if mb.frozen_sample[p + 1] else seq[p])
        total += loss
    return total / 2


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_objective_against_the_reference(loss_type):
    c = cfg_of(beta=[0.3, 0.1], loss_type=loss_type, gradient_accumulation_steps=2)
    obj = PreferenceObjective(c, resolve_schedule(c))
    logits = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1), dtype=F64, requires_grad=True)
    for epoch, beta in ((0, 0.3), (1, 0.1), (5, 0.1)):
        loss, stats = obj.loss(_mb(epoch), logits)
        assert float(loss) == pytest.approx(reference(logits.detach(), _mb(), beta, loss_type) / 2, rel=1e-10)
        assert stats["beta"][1] == beta
    ref_logits = logits.detach().clone().requires_grad_(True)
    loss, _ = obj.loss(_mb(0), logits)
    (g,) = torch.autograd.grad(loss, logits)
    lp = ref_logits - torch.logsumexp(ref_logits, -1, keepdim=True)
    mb = _mb(0)
    seq = (lp.gather(-1, mb.completion_ids.unsqueeze(-1)).squeeze(-1) * mb.completion_mask).sum(-1)
    refs = (mb.ref_logprobs * mb.completion_mask).sum(-1)
    h = (seq[0::2] - refs[0::2]) - (seq[1::2] - refs[1::2])
    want = dpo_loss(h, 0.3, loss_type).mean() / 2
    (g_ref,) = torch.autograd.grad(want, ref_logits)
    assert torch.allclose(g, g_ref, atol=1e-12)


def test_xpo_alpha_zero_is_online_dpo_and_the_bonus_is_alpha_log_pi_of_the_reference_sample():
    logits = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    dpo, xpo0, xpo = cfg_of(), cfg_of("xpo", alpha=0.0), cfg_of("xpo", alpha=0.5)
    l_dpo = PreferenceObjective(dpo, resolve_schedule(dpo)).loss(_mb(), logits)[0]
    l_x0 = PreferenceObjective(xpo0, resolve_schedule(xpo0)).loss(_mb(), logits)[0]
    l_x, stats = PreferenceObjective(xpo, resolve_schedule(xpo)).loss(_mb(), logits)
    assert float(l_x0) == pytest.approx(float(l_dpo), rel=1e-12)
    assert float(l_x) == pytest.approx(reference(logits, _mb(), 0.1, "sigmoid", alpha=0.5), rel=1e-10)
    assert stats["alpha"][1] == 0.5 and stats["loss/xpo"][1] / stats["loss/xpo"][2] < 0  # log pi < 0


def test_a_pair_without_preference_adds_nothing():
    c = cfg_of()
    obj = PreferenceObjective(c, resolve_schedule(c))
    logits = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    mb = _mb()
    mb.preference = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64)
    loss, stats = obj.loss(mb, logits)
    lp = logits - torch.logsumexp(logits, -1, keepdim=True)
    seq = [
        (lp[i].gather(-1, mb.completion_ids[i].unsqueeze(-1)).squeeze(-1) * mb.completion_mask[i]).sum() for i in (0, 1)
    ]
    refs = [(mb.ref_logprobs[i] * mb.completion_mask[i]).sum() for i in (0, 1)]
    h = float((seq[0] - refs[0]) - (seq[1] - refs[1]))
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.1 * h)), rel=1e-10)
    assert stats["logps/chosen"][2] == 1.0


@pytest.mark.parametrize(
    "algorithm, message",
    [
        ({"name": "online_dpo", "num_generations": 8}, "num_generations must be 2"),
        ({"name": "xpo", "num_generations": 4}, "num_generations must be 2"),
        ({"name": "online_dpo", "beta": []}, "beta: the schedule is empty"),
        ({"name": "xpo", "alpha": []}, "alpha: the schedule is empty"),
        ({"name": "online_dpo", "beta": [0.1, -1]}, "beta: every value must be a positive number"),
        ({"name": "online_dpo", "per_device_train_batch_size": 3}, "must be even"),
        ({"name": "online_dpo", "loss_type": "hinge"}, "loss_type"),
    ],
)
def test_config_errors(algorithm, message):
    raw = quickstart_dict(algorithm=None)
    raw["algorithm"] = algorithm
    with pytest.raises(ConfigError, match=message):
        validate_dict(raw)


def test_needs():
    assert [t.pool for t in cfg_of().needs.teachers] == ["reference"] and not cfg_of().needs.frozen_rollout
    n = cfg_of("xpo").needs
    assert n.frozen_rollout and n.frozen_rollout_model == "policy" and n.teachers[0].temperature == 1.0
