"""Partial rollouts: a generation in flight across a weight sync finishes with the new weights; its rows are flagged
mixed-version and carry their oldest version; tokens after the switch have the new weights' behaviour log-probs."""

import time

import torch

from relay_rl.sampling import SamplingParams


def test_generation_in_flight_switches_weights_between_chunks(ray_cluster, kit):
    import ray
    from transformers import AutoModelForCausalLM

    from relay_rl.rollout_workers.actor import RolloutWorker
    from relay_rl.transport.object_store import to_arrays

    model = kit["base"]  # untrained weights: completions run to max_tokens, so the generation takes a while
    w = (
        ray.remote(RolloutWorker)
        .options(num_cpus=1, max_concurrency=2)
        .remote(model, "hf", "float32", {}, partial_rollout_chunk=2)
    )
    ray.get(w.ping.remote())
    hf = AutoModelForCausalLM.from_pretrained(model)
    g = torch.Generator().manual_seed(0)
    new = {k: (p + 0.5 * torch.randn(p.shape, generator=g)).detach() for k, p in hf.named_parameters()}
    refs = [ray.put(to_arrays(new))]

    records = [{"prompt": f"{10 + i % 80}+{20 + i % 70}="} for i in range(128)]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=48, seed=0)
    gen = w.generate.remote(records, params)
    time.sleep(0.3)  # the load arrives while the generation (about 2 s of 2-token chunks) runs
    load = ray.get(w.receive_weights.remote(1, "object_store", refs))
    batch = ray.get(gen)
    assert load["deferred"] is True
    assert batch.mixed_version.any(), "no row crossed the weight sync"
    assert batch.policy_version.eq(0).all()  # tagged with the oldest version that sampled them
    assert ray.get(w.get_version.remote()) == 1
    # a row's last token was sampled by the new weights: its behaviour log-prob is the new model's
    from relay_rl.learner.logprobs import completion_logprobs

    hf.load_state_dict(new, strict=False)
    i = int(batch.mixed_version.nonzero()[0])
    L = int(batch.completion_mask[i].sum())
    lp, _ = completion_logprobs(
        hf,
        batch.prompt_ids[i : i + 1],
        batch.prompt_mask[i : i + 1],
        batch.completion_ids[i : i + 1, :L],
        batch.completion_mask[i : i + 1, :L],
    )
    assert abs(float(lp[0, L - 1]) - float(batch.behaviour_logprobs[i, L - 1])) < 1e-4
    ray.kill(w)
