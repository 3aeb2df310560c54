"""Distillation families in the run file: the union by ``name``, TRL's defaults, and bad input that fails before any
actor starts, naming the field (and both models for a vocabulary mismatch)."""

import pytest

from relay_rl.cluster.config import validate_dict
from relay_rl.cluster.preflight import check_teacher
from relay_rl.errors import ConfigError
from tests.conftest import quickstart_dict


def distill(algorithm: dict, **sections) -> dict:
    return quickstart_dict(algorithm=None, teacher={"name_or_path": "kit:teacher"}, **sections) | {
        "algorithm": algorithm
    }


def test_union_selects_the_family_with_trls_defaults():
    gkd = validate_dict(distill({"name": "gkd"})).algorithm
    assert (gkd.lmbda, gkd.beta, gkd.seq_kd, gkd.num_generations, gkd.loss_top_k) == (0.5, 0.5, False, 1, 0)
    opd = validate_dict(distill({"name": "on_policy_distillation"})).algorithm
    assert opd.beta == 1.0 and opd.on_policy_fraction == 1.0 and not hasattr(opd, "lmbda")
    gold = validate_dict(distill({"name": "gold"})).algorithm
    assert (gold.lmbda, gold.use_uld_loss, gold.uld_token_merge_strategy) == (0.5, False, "observed")
    mini = validate_dict(distill({"name": "minillm", "num_generations": 1})).algorithm
    assert mini.scale_rewards == "none" and mini.rkl_advantage and mini.gamma == 0.0  # G = 1 forces no scaling
    assert validate_dict(quickstart_dict()).algorithm.name == "grpo"  # name defaults to grpo


def test_a_knob_of_another_family_names_its_owners():
    with pytest.raises(ConfigError) as e:
        validate_dict(quickstart_dict(algorithm={"lmbda": 0.5}))
    msg = str(e.value)
    assert "algorithm.lmbda: unknown field 'lmbda'" in msg and "knob of algorithm.name gkd, gold" in msg
    assert "this run is grpo" in msg
    with pytest.raises(ConfigError, match=r"algorithm.loss_type: unknown field.*knob of algorithm.name grpo, minillm"):
        validate_dict(distill({"name": "gkd", "loss_type": "dapo"}))
    with pytest.raises(ConfigError, match="does not match any of the expected tags"):
        validate_dict(distill({"name": "distil"}))


def test_missing_teacher_and_other_rules():
    raw = distill({"name": "gkd"})
    del raw["teacher"]
    with pytest.raises(ConfigError, match=r"algorithm gkd learns from a teacher model: add `teacher: \{name_or_path"):
        validate_dict(raw)
    with pytest.raises(ConfigError, match="must be a multiple of num_generations"):
        validate_dict(distill({"name": "gkd", "num_generations": 3, "per_device_train_batch_size": 32}))
    with pytest.raises(ConfigError, match="use_uld_loss with seq_kd"):
        validate_dict(distill({"name": "gold", "use_uld_loss": True, "seq_kd": True}))
    with pytest.raises(ConfigError, match="cluster.teacher.replicas >= 1"):
        validate_dict(distill({"name": "on_policy_distillation"}, cluster={"teacher": {"replicas": 0}}))
    raw = distill({"name": "on_policy_distillation"})
    del raw["reward"]  # rewards are optional for distillation
    assert validate_dict(raw).reward is None


@pytest.fixture(scope="module")
def other_tokenizer_teacher(kit, tmp_path_factory):
    """A tiny untrained model with the digit-pair tokenizer (114 tokens)."""
    from relay_rl.cluster.kit.task import build_model, build_pair_tokenizer

    tok = build_pair_tokenizer()
    model = build_model(kit["cfg"], tok)
    path = tmp_path_factory.mktemp("pairs")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_preflight_checks_the_teacher_before_any_actor(kit, other_tokenizer_teacher, tmp_path):
    cfg = validate_dict(distill({"name": "on_policy_distillation"}))
    check_teacher(cfg, kit["warm_start"], kit["base"])  # same vocabulary: fine
    with pytest.raises(ConfigError, match=r"teacher.name_or_path: no such folder .*/nowhere"):
        check_teacher(cfg, kit["warm_start"], str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as e:
        check_teacher(cfg, kit["warm_start"], other_tokenizer_teacher)
    msg = str(e.value)
    assert "vocabulary differs" in msg and other_tokenizer_teacher in msg and kit["warm_start"] in msg
    assert "use_uld_loss: true" in msg
    uld = validate_dict(distill({"name": "gold", "use_uld_loss": True}))
    check_teacher(uld, kit["warm_start"], other_tokenizer_teacher)  # cross-tokenizer mode accepts it
    topk = validate_dict(distill({"name": "on_policy_distillation", "loss_top_k": 20}))
    with pytest.raises(ConfigError, match=r"algorithm.loss_top_k: 20 is larger than the teacher's vocabulary \(14"):
        check_teacher(topk, kit["warm_start"], kit["base"])
