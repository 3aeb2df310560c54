"""The DeepSeek-R1 pipeline from one run file (deploy/recipes/deepseek_r1_pipeline.yaml with the kit overlay):
cold-start SFT from the untrained base model -> reasoning GRPO (accuracy, format and language-consistency rewards, a
reference that is replaced every 50 steps) -> rejection-sampling SFT -> GRPO for all scenarios, each stage from the
previous one's final weights, on real pools. Then a stage resumed on its own."""

import json
import shutil

import pytest

from relay_rl.cluster.config import load_config
from relay_rl.cluster.stages import train_stages
from tests.conftest import RECIPES

SHORT = [
    "stages.cold_start.train.max_steps=150",
    "stages.reasoning_rl.train.max_steps=8",
    "stages.rejection_sampling.algorithm.num_prompts=128",
    "stages.all_scenarios.train.max_steps=8",
    "stages.all_scenarios.train.save_steps=4",
]


def _pipeline(*overrides):
    return load_config(
        RECIPES / "deepseek_r1_pipeline.yaml",
        [str(RECIPES.parent / "overlays" / "kit_r1_pipeline.yaml"), *SHORT, *overrides],
    )


@pytest.mark.slow
def test_r1_pipeline_runs_all_four_stages_and_resumes_a_stage(ray_cluster, kit_r1, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train_stages(_pipeline(), output_dir=str(tmp_path))
    state = json.loads((tmp_path / "stages.json").read_text())["stages"]
    assert list(state) == ["cold_start", "reasoning_rl", "rejection_sampling", "all_scenarios"]
    assert all(s["status"] == "done" for s in state.values())
    assert [state[s]["algorithm"] for s in state] == ["sft", "grpo", "rejection_sampling", "grpo"]
    # each stage starts where the previous one ended (its step-0 evaluation is of the same weights)
    names = list(state)
    for before, after in zip(names, names[1:]):
        assert state[after]["eval_accuracy_start"] == pytest.approx(state[before]["eval_accuracy"], abs=1e-9)
        assert str(tmp_path / before / "final") in (tmp_path / after / "config.yaml").read_text()
    assert state["cold_start"]["eval_accuracy_start"] < 0.05  # the untrained base model
    assert state["cold_start"]["eval_accuracy"] >= 0.25  # the cold start taught the think format and some sums
    kept = [
        json.loads(line)
        for line in (tmp_path / "rejection_sampling" / "rejection_sampling.jsonl").read_text().splitlines()
    ]
    assert kept and all(r["reward"] >= 1.5 and r["r1_completion"].startswith("<think>") for r in kept)
    rs = [json.loads(line) for line in (tmp_path / "rejection_sampling" / "metrics.jsonl").read_text().splitlines()]
    assert rs[0]["rejection_sampling/kept"] == len(kept) and rs[0]["rejection_sampling/sampled"] == 128 * 4
    # the final checkpoint is an HF model that transformers loads and that writes the think format
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    out = model.generate(
        **tok(["12+34="], return_tensors="pt", add_special_tokens=False),
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    assert tok.decode(out[0, 6:], skip_special_tokens=True).startswith("<think>")
    assert result["stages"]["all_scenarios"]["steps"] == 8

    # the last stage stopped after its step-4 checkpoint: --resume continues that stage alone, from the checkpoint
    last = tmp_path / "all_scenarios"
    shutil.rmtree(last / "final")
    shutil.rmtree(last / "checkpoint-8")
    stages_file = json.loads((tmp_path / "stages.json").read_text())
    stages_file["stages"]["all_scenarios"]["status"] = "running"
    (tmp_path / "stages.json").write_text(json.dumps(stages_file))
    earlier = {s: (tmp_path / s / "metrics.jsonl").stat().st_mtime for s in names[:3]}
    train_stages(_pipeline(), output_dir=str(tmp_path), resume="auto")
    assert {s: (tmp_path / s / "metrics.jsonl").stat().st_mtime for s in names[:3]} == earlier  # not run again
    steps = [
        json.loads(line)["step"]
        for line in (last / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, 9))
    assert json.loads((tmp_path / "stages.json").read_text())["stages"]["all_scenarios"]["status"] == "done"
    assert (tmp_path / "final" / "model.safetensors").is_file()
