"""The family contract (learner/methods/base.py ``Family``): every registered family is defined through it, names only
hooks the contract has, and the example family of docs/architecture.md works as written."""

import re
import types

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.learner.methods import CONFIG_MODELS, FAMILIES, Family, Objective
from tests.conftest import ROOT


def test_every_family_is_defined_through_the_contract():
    for name, fam in FAMILIES.items():
        assert isinstance(fam, Family), name
        assert issubclass(fam.objective, Objective), name
        assert name in fam.names
        assert type(fam).needs is not Family.needs and type(fam).assemble is not Family.assemble, name
    assert [c.model_fields["name"].default for c in CONFIG_MODELS] == list(FAMILIES)


def test_families_name_only_the_contracts_hooks():
    """A hook spelled wrongly (``after_steps``) would never be called: a family's public names are the contract's."""
    hooks = {n for n in dir(Family) if not n.startswith("_")} | {"objective"}  # declared, no default
    for fam in set(map(type, FAMILIES.values())):
        own = {
            n
            for c in fam.__mro__
            if c is not Family and issubclass(c, Family)
            for n in vars(c)
            if not n.startswith("_")
        }
        assert own <= hooks, (fam.__name__, own - hooks)


def test_every_hook_says_what_it_is_for():
    for name in dir(Family):
        if name.startswith("_") or name in ("configs", "objective", "curve", "names"):
            continue
        assert (getattr(Family, name).__doc__ or "").strip(), name


def example_family() -> types.ModuleType:
    """The code block of docs/architecture.md's "Writing a family", as a module of learner/methods."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    code = re.search(r"### Writing a family.*?```python\n(.*?)```", text, flags=re.S).group(1)
    module = types.ModuleType("relay_rl.learner.methods.best_of_n")
    module.__package__ = "relay_rl.learner.methods"
    exec(compile(code, "docs/architecture.md", "exec"), module.__dict__)
    return module


def test_the_documented_example_family_works():
    m = example_family()
    fam = m.BestOfN()
    assert fam.names == ["best_of_n"] and not fam.mixes_sources and not fam.makes_data
    batch = Batch(
        prompt_ids=torch.ones(3, 2, dtype=torch.long),
        prompt_mask=torch.ones(3, 2, dtype=torch.long),
        completion_ids=torch.tensor([[1, 2], [2, 0], [1, 1]]),
        completion_mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        behaviour_logprobs=torch.zeros(3, 2),
        policy_version=torch.zeros(3, dtype=torch.long),
        group_id=torch.zeros(3, dtype=torch.long),
        truncated=torch.zeros(3, dtype=torch.bool),
        rewards=torch.tensor([[1.0], [0.0], [float("nan")]]),
    )
    alg = m.BestOfNConfig(num_generations=3, per_device_train_batch_size=3)
    out, stats = fam.assemble(batch, alg, [1.0], 0)
    assert out.completion_mask.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]  # the unscorable row never passes
    assert stats["best_of_n/kept"] == pytest.approx(1 / 3)

    obj = m.BestOfNObjective.__new__(m.BestOfNObjective)
    obj.sched = types.SimpleNamespace(P=1)
    obj.begin_step([out])
    logits = torch.randn(3, 2, 4, dtype=torch.float64)
    loss, _ = obj.loss(out, logits)
    want = -torch.log_softmax(logits[0], -1)[[0, 1], [1, 2]].sum() / 2  # the kept row's token-mean NLL
    torch.testing.assert_close(loss, want)
