#!/usr/bin/env bash
# The GPU checks and benchmarks in one call, from the repository root of a GPU machine where relay-rl's
# dependencies (torch, vLLM's GPU build, Ray, DeepSpeed) are importable:   bash tests/gpu/device_check.sh
# Each step has its own timeout and the script goes on when one fails; logs and summary.txt land under $OUT.
# Written without a GPU to try it on: expect to mend it the first time it runs.
set -u
export OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled PYTHONPATH="$PWD:${PYTHONPATH:-}"
export RELAY_RL_VLLM_ATTENTION_BACKEND=${RELAY_RL_VLLM_ATTENTION_BACKEND:-TRITON_ATTN} VLLM_USE_FLASHINFER_SAMPLER=0
summary="$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt" > "$summary"

step() {  # step NAME SECONDS COMMAND...: run, keep its log, note its exit code and time
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: rc $? in $((SECONDS - t0)) s" >> "$summary"
}

# 1. the GPU tests: vLLM on CUDA against transformers, in-place updates, ZeRO-3 over NCCL, colocated runs (NCCL, CUDA IPC),
#    multi-turn trajectories on vLLM (builds the kit's tools variant first)
step tests_gpu 300 python3 -m pytest -q -p no:cacheprovider tests/gpu
# 2. the rollout actor with GPU vLLM against raw vllm.LLM.generate (target: within 10%)
step rollout 80 python3 tests/benchmarks/bench_rollout_sync.py --gpu --engine vllm --skip sync --repeats 5 \
    --prompts 256 --max-tokens 64
# 3. a 0.5B-size weight sync (1,900 MiB in fp32, ~0.5B parameters) into GPU vLLM, every transport (target: 0.5 s)
step sync_0p5b 160 python3 tests/benchmarks/bench_rollout_sync.py --gpu --engine vllm --skip rollout --repeats 3 \
    --sync-mb 1900 --transports ipc collective object_store
# 4. the quickstart on the GPU (learner ranks and rollout with half the GPU each)
step quickstart 100 python3 -m relay_rl train deploy/recipes/quickstart.yaml train.max_steps=200 \
    cluster.learner.replicas=1 cluster.learner.num_gpus=0.5 cluster.rollout.num_gpus=0.5 --output "$OUT/quickstart"

grep -h "^(a)\|^(b)" "$OUT"/rollout.log "$OUT"/sync_0p5b.log >> "$summary" 2>/dev/null
grep -h "eval accuracy\|samples/s\|time per step" "$OUT"/quickstart.log >> "$summary" 2>/dev/null
for f in "$OUT"/gpu_timings_*.json; do [ -f "$f" ] && { echo "$(basename "$f"): $(cat "$f")"; } >> "$summary"; done
tail -n 3 "$OUT/tests_gpu.log" >> "$summary"
cat "$summary"
