"""DAPO's dynamic sampling: which groups carry a gradient, which the batch keeps, what is counted, the settings."""

import math

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.dynamic_sampling import choose_groups, enough, group_verdicts, next_round_size, select_groups
from relay_rl.cluster.ledger import Ledger
from relay_rl.errors import ConfigError, RunError
from tests.conftest import quickstart_dict

nan = math.nan


def scored(rewards, groups):
    n = len(groups)
    return Batch(
        prompt_ids=torch.ones(n, 1, dtype=torch.long),
        prompt_mask=torch.ones(n, 1, dtype=torch.long),
        completion_ids=torch.arange(n).unsqueeze(1),
        completion_mask=torch.ones(n, 1),
        behaviour_logprobs=torch.zeros(n, 1),
        policy_version=torch.zeros(n, dtype=torch.long),
        group_id=torch.tensor(groups),
        truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.tensor(rewards, dtype=torch.float32),
        completions=[str(i) for i in range(n)],
    )


def test_a_group_varies_when_two_scorable_rows_differ():
    b = scored([[1.0], [0.0], [1.0], [1.0], [nan], [0.0], [nan], [nan], [0.5], [0.5]], [7, 7, 3, 3, 5, 5, 9, 9, 4, 4])
    assert group_verdicts(b, [1.0], None) == [(7, True, 2), (3, False, 2), (5, False, 2), (9, False, 2), (4, False, 2)]


def test_the_metric_is_the_weighted_total_or_one_column():
    # column 0 varies in group 0 but the weighted total does not (1*1 + 1*0 == 1*0 + 1*1); column 1 likewise
    b = scored([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], [0, 0, 1, 1])
    assert group_verdicts(b, [1.0, 1.0], None) == [(0, False, 2), (1, True, 2)]
    assert group_verdicts(b, [1.0, 1.0], 0) == [(0, True, 2), (1, False, 2)]
    assert group_verdicts(b, [1.0, 0.0], None) == [(0, True, 2), (1, False, 2)]  # a weight of 0 hides column 1


def test_the_first_varied_groups_in_round_order_and_the_surplus_cut_whole():
    rounds = [[(0, True, 4), (1, False, 4), (2, True, 4)], [(10, False, 4), (11, True, 4), (12, True, 4)]]
    c = choose_groups(rounds, need=3, when_exhausted="fill")
    assert c.groups == [0, 2, 11]
    assert c.stats == {
        "dynamic_sampling/rounds": 2,
        "dynamic_sampling/generated_groups": 6,
        "dynamic_sampling/dropped_groups": 3,
        "dynamic_sampling/tied_groups": 2,
        "dynamic_sampling/surplus_groups": 1,
        "dynamic_sampling/filled_groups": 0,
        "dynamic_sampling/kept_group_ratio": 4 / 6,
        "dynamic_sampling/dropped_samples": 12,
    }


def test_exhausted_rounds_fill_with_tied_groups_or_stop():
    rounds = [[(0, False, 2), (1, True, 2)], [(5, False, 2), (6, False, 2)]]
    assert enough(rounds, need=3, max_rounds=2) and not enough(rounds, need=3, max_rounds=0)
    assert not enough(rounds[:1], need=3, max_rounds=2)
    c = choose_groups(rounds, need=3, when_exhausted="fill")
    assert c.groups == [0, 1, 5]  # in round order: the varied group and the first tied ones
    assert c.stats["dynamic_sampling/filled_groups"] == 2 and c.stats["dynamic_sampling/dropped_groups"] == 1
    with pytest.raises(RunError, match="1 of the 3 groups .* after 2 rounds .*max_num_gen_batches"):
        choose_groups(rounds, need=3, when_exhausted="error")


def test_later_rounds_are_sized_by_the_share_of_varied_groups():
    first = [[(g, g % 4 == 0, 8) for g in range(32)]]  # 8 of 32 varied: 24 missing at a share of 1/4
    assert next_round_size(first, need=32, full=32) == 32  # 24 * 4 * 1.25 = 120: at most a full round
    most = [[(g, g % 8 != 0, 8) for g in range(32)]]  # 28 of 32 varied: 4 missing at 7/8
    assert next_round_size(most, need=32, full=32) == 6  # ceil(4 * 32 / 28 * 1.25)
    assert next_round_size([[(0, False, 8), (1, False, 8)]], need=2, full=2) == 2  # nothing varied yet: a full round


def test_select_groups_keeps_whole_groups_in_the_chosen_order():
    b = scored([[0.0]] * 6, [4, 4, 9, 9, 2, 2])
    assert select_groups(b, [2, 4]).completions == ["4", "5", "0", "1"]


def test_the_ledger_counts_filtered_samples_as_dropped():
    class Gen:
        def __init__(self, gen_id, rows, filtered):
            self.gen_id, self.stats, self.filtered_rows = gen_id, {"rows": rows}, filtered

    ledger = Ledger()
    for g in (Gen(0, 192, 128), Gen(1, 64, 0), Gen(2, 128, 64)):
        ledger.generated(g)
    ledger.admitted(Gen(0, 0, 0), 1)
    ledger.admitted(Gen(1, 0, 0), 1)
    ledger.dropped(Gen(2, 0, 0), lag=2)  # too stale: all of its 128 samples
    c = ledger.counters()
    assert c == {
        "pipeline/generated_samples": 384,
        "pipeline/admitted_samples": 128,
        "pipeline/dropped_samples": 256,
        "pipeline/filtered_samples": 192,
        "pipeline/stale_used_samples": 0,
    }
    restored = Ledger()
    restored.restore(ledger.state())
    assert restored.counters() == c


def test_settings():
    cfg = validate_dict(quickstart_dict(algorithm={"filter_groups": {"enable": True}}))
    fg = cfg.algorithm.filter_groups
    assert (fg.metric, fg.max_num_gen_batches, fg.when_exhausted) == ("reward", 10, "fill")
    cfg = validate_dict(quickstart_dict(algorithm={"filter_groups": {"enable": True, "metric": "arithmetic_exact"}}))
    assert cfg.family.group_filter(cfg)[1] == 0
    with pytest.raises(ConfigError, match="filter_groups.metric 'acc' is not a reward function of this run"):
        validate_dict(quickstart_dict(algorithm={"filter_groups": {"enable": True, "metric": "acc"}}))
    with pytest.raises(ConfigError, match="filter_groups .* is for the GRPO family"):
        validate_dict(quickstart_dict(algorithm={"name": "sdpo", "filter_groups": {"enable": True}}))
    plain = validate_dict(quickstart_dict())
    assert plain.family.group_filter(plain) is None


def test_the_dapo_recipe_turns_it_on():
    from relay_rl.cluster.config import load_config
    from tests.conftest import RECIPES

    fg = load_config(RECIPES / "dapo.yaml").algorithm.filter_groups
    assert fg.enable and fg.metric == "reward" and fg.max_num_gen_batches == 10 and fg.when_exhausted == "fill"
