"""The kit's trained reward model (``kit:reward_model``): built once into the cache (about 2 minutes on 2 cores), then
reused. Its held-out pairwise accuracy is measured again through the ``reward_model`` reward function, the path a
run scores with, so a wrong part.json, a save that loses the head or a text format that differs from training fails
here."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

import pytest

# the teachers' settings as their cached builds recorded them: a change here rebuilds every cached teacher
TEACHER_SETTINGS = {
    "teacher": {
        "tokenizer": "char",
        "seed_offset": 1,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 512,
        "max_position_embeddings": 64,
        "learning_rate": 0.003,
        "min_lr_ratio": 0.1,
        "batch_size": 128,
        "warmup_steps": 50,
        "max_steps": 900,
        "eval_every": 50,
        "target_dev_accuracy": 0.98,
        "min_steps": 300,
    },
    "teacher_pairs": {
        "tokenizer": "pairs",
        "seed_offset": 2,
        "hidden_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 768,
        "max_position_embeddings": 64,
        "learning_rate": 0.003,
        "min_lr_ratio": 0.1,
        "batch_size": 128,
        "warmup_steps": 50,
        "max_steps": 3000,
        "eval_every": 100,
        "target_dev_accuracy": 0.98,
        "min_steps": 0,
    },
}


@pytest.fixture(scope="module")
def rm(kit):
    from tests.conftest import build_kit

    root = build_kit(kit["cfg"], parts=("reward_model",))
    return {"cfg": kit["cfg"], "root": root, "path": str(root / "reward_model")}


def _rows(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def test_part_json_records_a_good_held_out_accuracy(rm):
    from relay_rl.cluster.kit.build import kit_part_summary
    from relay_rl.cluster.kit.parts import KIT_PARTS, NEGATIVE_KINDS, PART_KEYS

    summary = kit_part_summary(rm["cfg"], "reward_model")
    assert set(summary) >= set(PART_KEYS)
    assert summary["test_accuracy"] >= 0.9, summary
    assert summary["settings"] == asdict(KIT_PARTS["reward_model"])
    assert set(summary["test_accuracy_by_kind"]) == set(NEGATIVE_KINDS)
    assert summary["test_pairs"] == len(_rows(rm["root"], "test")) * len(NEGATIVE_KINDS)
    assert summary["test_score_correct_mean"] > summary["test_score_wrong_mean"]


def test_the_reward_function_ranks_correct_above_wrong_on_held_out_prompts(rm):
    """Through ``{name: reward_model, kwargs: {model: <kit>/reward_model}}`` (batched, left padded): the same pairs
    as part.json's, the same accuracy; and a fresh set of wrong completions is ranked as well."""
    from relay_rl.cluster.kit.build import kit_part_summary
    from relay_rl.cluster.kit.parts import KIT_PARTS, reward_pairs
    from relay_rl.reward_workers.registry import resolve

    _, fn = resolve({"name": "reward_model", "kwargs": {"model": rm["path"], "batch_size": 64}}, None)
    test = _rows(rm["root"], "test")

    def accuracy(pairs):
        right = fn(prompts=[p for p, *_ in pairs], completions=[c for _, c, *_ in pairs])
        wrong = fn(prompts=[p for p, *_ in pairs], completions=[w for _, _, w, *_ in pairs])
        return sum(r > w for r, w in zip(right, wrong)) / len(pairs)

    seed = rm["cfg"].seed + KIT_PARTS["reward_model"].seed_offset
    recorded = kit_part_summary(rm["cfg"], "reward_model")["test_accuracy"]
    assert accuracy(reward_pairs(test, seed + 2)) == pytest.approx(recorded, abs=2 / len(test))
    assert accuracy(reward_pairs(test, 12345)) >= 0.88


def test_it_loads_as_a_sequence_classifier_and_pools_the_last_token(rm):
    """``AutoModelForSequenceClassification``/``AutoTokenizer`` load the folder; with the tokenizer's left padding,
    a batch of texts of different lengths scores each as it scores alone."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm["path"]).eval()
    tok = AutoTokenizer.from_pretrained(rm["path"])
    assert type(model).__name__ == "Qwen3ForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id and tok.padding_side == "left"
    row = _rows(rm["root"], "test")[0]
    texts = [row["prompt"] + row["answer"], row["prompt"], row["prompt"] + row["answer"] + "9"]
    with torch.no_grad():
        batched = model(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0]
        alone = torch.stack([model(**tok(t, return_tensors="pt")).logits[0, 0] for t in texts])
    assert torch.allclose(batched, alone, atol=1e-4)
    assert batched[0] > batched[1] and batched[0] > batched[2]  # the answer above nothing and above one digit more


def test_a_cached_build_is_reused_and_the_teachers_settings_are_unchanged(rm):
    from relay_rl.cluster.kit.parts import KIT_PARTS
    from tests.conftest import build_kit

    stamp = (rm["root"] / "reward_model" / "part.json").stat().st_mtime_ns
    build_kit(rm["cfg"], parts=("reward_model",), log=lambda *_: pytest.fail("a complete part was rebuilt"))
    assert (rm["root"] / "reward_model" / "part.json").stat().st_mtime_ns == stamp
    assert {n: asdict(KIT_PARTS[n]) for n in TEACHER_SETTINGS} == TEACHER_SETTINGS


def test_stale_settings_rebuild_through_the_parts_own_build(tmp_path, monkeypatch):
    """``_ensure_part`` dispatches to the settings' ``build`` (any part kind) and rebuilds a part.json whose settings
    differ; a complete one with today's settings is kept."""
    from relay_rl.cluster.config import KitConfig
    from relay_rl.cluster.kit import build as kit_mod

    calls = []

    @dataclass(frozen=True)
    class Fake:
        x: int = 1

        def build(self, cfg, root, out, log=print, name=""):
            calls.append(name)
            out.mkdir(parents=True, exist_ok=True)
            summary = {k: 0 for k in kit_mod.PART_KEYS} | {"settings": asdict(self)}
            (out / "part.json").write_text(json.dumps(summary))
            return summary

    monkeypatch.setitem(kit_mod.KIT_PARTS, "fake", Fake())
    cfg, root = KitConfig(dir=str(tmp_path)), tmp_path
    (root / "fake").mkdir()
    (root / "fake" / "part.json").write_text(json.dumps({k: 0 for k in kit_mod.PART_KEYS} | {"settings": {"x": 0}}))
    kit_mod._ensure_part(cfg, root, "fake", log=lambda *_: None)
    kit_mod._ensure_part(cfg, root, "fake", log=lambda *_: None)
    assert calls == ["fake"]


def test_kit_paths_in_reward_kwargs_resolve_and_name_the_part(kit):
    from relay_rl.cluster.config import RewardConfig
    from relay_rl.cluster.kit.paths import kit_dir, kit_parts_needed, resolve_reward_funcs, reward_kit_paths

    reward = RewardConfig(
        reward_funcs=[
            "arithmetic_exact",
            {"name": "reward_model", "kwargs": {"model": "kit:reward_model", "batch_size": 8}},
        ]
    )
    assert reward_kit_paths(reward) == ("kit:reward_model",)
    assert reward_kit_paths(None) == ()
    assert kit_parts_needed("kit:warm_start", None, *reward_kit_paths(reward)) == ("reward_model",)
    assert resolve_reward_funcs(reward.reward_funcs, kit["cfg"]) == [
        "arithmetic_exact",
        {"name": "reward_model", "kwargs": {"model": str(kit_dir(kit["cfg"]) / "reward_model"), "batch_size": 8}},
    ]
    with pytest.raises(ValueError, match="no kit section"):
        resolve_reward_funcs(reward.reward_funcs, None)


def test_wrong_completions_are_wrong_and_varied():
    from relay_rl.cluster.kit.parts import NEGATIVE_KINDS, reward_pairs, wrong_completion

    rng = random.Random(0)
    for answer in ("20", "46", "100", "109", "198", "11"):
        for kind in NEGATIVE_KINDS:
            for _ in range(20):
                w = wrong_completion(answer, rng, kind)
                assert w != answer and set(w) <= set("0123456789+=")
    rows = [{"prompt": "12+34=", "answer": "46"}]
    pairs = reward_pairs(rows, seed=1)
    assert [k for *_, k in pairs] == list(NEGATIVE_KINDS) and pairs == reward_pairs(rows, seed=1)
    assert ("12+34=", "46", "", "truncated") in reward_pairs(rows * 20, seed=2)  # the empty completion is a negative
