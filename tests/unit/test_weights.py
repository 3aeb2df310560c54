"""The object-store wire format of a weight bucket: tensors back to back in memory travel as one array, and arrive
bit-exact, in order, as zero-copy views."""

import numpy as np
import pytest
import torch

from relay_rl.transport.object_store import SEGMENTS_KEY, arrays_to_tensors, bucket_nbytes, to_arrays


def _roundtrip(bucket: dict) -> tuple[dict, dict]:
    wire = to_arrays(bucket)
    return wire, arrays_to_tensors(wire)


def test_adjacent_views_travel_as_one_array_without_a_copy():
    flat = torch.randn(10 + 12 + 3)
    bucket = {"a": flat[:10].view(2, 5), "b": flat[10:22].view(3, 4), "c": flat[22:]}
    wire, back = _roundtrip(bucket)
    [(array, index)] = wire[SEGMENTS_KEY]
    assert array.size == 25 and np.shares_memory(array, flat.numpy())  # one view: ray.put makes the only copy
    assert [i[0] for i in index] == ["a", "b", "c"]
    assert list(back) == ["a", "b", "c"]
    for k in bucket:
        assert back[k].shape == bucket[k].shape and torch.equal(back[k], bucket[k])
    assert bucket_nbytes(wire) == 25 * 4


def test_separate_tensors_gaps_and_dtypes_split_segments():
    flat = torch.randn(20)
    bucket = {
        "x": flat[:5],
        "gap": flat[6:10],  # not adjacent to x
        "y": torch.randn(3, 3),
        "h": torch.randn(4, dtype=torch.float64).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).view(2, 3),
        "t": flat[10:20].view(2, 5).t(),
    }  # not contiguous
    wire, back = _roundtrip(bucket)
    assert len(wire[SEGMENTS_KEY]) == 6
    for k, v in bucket.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(back[k], v), k
    assert bucket_nbytes(wire) == sum(v.numel() * v.element_size() for v in bucket.values())


def test_bfloat16_run_is_one_segment_and_bit_exact():
    flat = torch.randn(30).to(torch.bfloat16)
    bucket = {"p": flat[:12].view(3, 4), "q": flat[12:]}
    wire, back = _roundtrip(bucket)
    assert len(wire[SEGMENTS_KEY]) == 1 and wire[SEGMENTS_KEY][0][0].dtype == np.int16
    assert all(torch.equal(back[k].view(torch.int16), bucket[k].view(torch.int16)) for k in bucket)


@pytest.mark.parametrize("world", [1, 2])
def test_zero3_gather_matches_the_module(world, tmp_path):
    """``gather_partitions`` (small parameters in one all-gather, large ones in place, back to back in one buffer)
    equals DeepSpeed's own ``GatheredParameters`` on a real ZeRO-3 engine over gloo, twice in a row (the buffer is
    reused)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gather_rank, args=(world, port, str(tmp_path)), nprocs=world, join=True)
    ours, theirs = torch.load(tmp_path / "ours.pt"), torch.load(tmp_path / "theirs.pt")
    assert list(ours) == list(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    segments, expected = torch.load(tmp_path / "segments.pt")
    assert segments == expected  # one array on the wire, split only after a parameter whose gather has padding


def _gather_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed

    from relay_rl.learner.gather import gather_partitions

    deepspeed.init_distributed("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 5, bias=False), torch.nn.Linear(5, 2048)
    )  # odd sizes pad; the last weight gathers in place
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    engine.backward(engine(torch.randn(1, 8)).square().sum())  # one step: partitions differ from the init
    engine.step()
    names, ps = zip(*engine.module.named_parameters())
    ours = {n: t.clone() for n, t in zip(names, gather_partitions(list(ps), direct_numel=1024))}
    again = dict(zip(names, gather_partitions(list(ps), direct_numel=1024)))  # into the same buffer
    assert all(torch.equal(again[n], ours[n]) for n in names)
    segments = len(to_arrays(again)[SEGMENTS_KEY])
    with deepspeed.zero.GatheredParameters(list(ps)):
        theirs = {n: p.detach().clone() for n, p in zip(names, ps)}
    if rank == 0:
        torch.save(ours, os.path.join(out, "ours.pt"))
        torch.save(theirs, os.path.join(out, "theirs.pt"))
        expected = 1 + sum(p.ds_numel % world != 0 for p in ps[:-1])
        torch.save((segments, expected), os.path.join(out, "segments.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: a C++ thread left by DeepSpeed or gloo can abort it ("terminate called
    # without an active exception"), which would fail the test after its results are written
