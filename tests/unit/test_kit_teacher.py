"""The kit's on-demand teachers: built once into the cache (a few minutes on 2 cores), then reused.

Accuracies are re-measured from the saved folders, so a wrong part.json or a save that loses weights fails here.
"""

from __future__ import annotations

import json

import pytest

PARTS = ("teacher", "teacher_pairs")


@pytest.fixture(scope="module")
def parts():
    from relay_rl.cluster.config import KitConfig
    from tests.conftest import build_kit

    cfg = KitConfig()
    root = build_kit(cfg, parts=PARTS)
    return {"cfg": cfg, "root": root}


def _load(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(folder),
    )


def _rows(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, floor", [("teacher", 0.95), ("teacher_pairs", 0.8)])
def test_teacher_held_out_accuracy(parts, name, floor):
    """Greedy accuracy on the never-trained test split, measured again from the saved folder, matches part.json."""
    from relay_rl.cluster.kit.build import kit_part_summary
    from relay_rl.cluster.kit.train_sft import greedy_accuracy

    model, tok = _load(parts["root"] / name)
    acc = greedy_accuracy(model, tok, _rows(parts["root"], "test"))
    summary = kit_part_summary(parts["cfg"], name)
    assert acc >= floor, f"{name}: held-out greedy accuracy {acc:.3f} < {floor}"
    assert acc == pytest.approx(summary["test_accuracy"])
    assert set(summary) >= {"test_accuracy", "dev_accuracy", "steps", "parameters", "build_s", "settings"}


def test_teacher_is_larger_and_shares_the_student_vocabulary(parts, kit):
    from transformers import AutoTokenizer

    from relay_rl.cluster.kit.build import kit_part_summary, kit_summary

    student = AutoTokenizer.from_pretrained(kit["warm_start"])
    teacher = AutoTokenizer.from_pretrained(parts["root"] / "teacher")
    assert teacher.get_vocab() == student.get_vocab()
    assert kit_part_summary(parts["cfg"], "teacher")["parameters"] > kit_summary(kit["cfg"])["parameters"]


def test_teacher_pairs_tokenizes_digit_pairs(parts, kit):
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(kit["warm_start"])
    tok = AutoTokenizer.from_pretrained(parts["root"] / "teacher_pairs")
    assert tok.get_vocab() != student.get_vocab() and len(tok) == 114
    assert tok.convert_ids_to_tokens(tok("123", add_special_tokens=False)["input_ids"]) == ["12", "3"]
    enc = tok("12+34=", add_special_tokens=False, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == ["12", "+", "34", "="]
    assert enc["offset_mapping"] == [(0, 2), (2, 3), (3, 5), (5, 6)]  # character offsets into the text
    assert tok.decode(enc["input_ids"]) == "12+34="
    assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<pad>", "<eos>", "left")


def test_sft_encoding_with_pair_tokens():
    """Prompt and answer are tokenized apart; with pairs that still gives the answer's pieces then EOS."""
    from relay_rl.cluster.kit.task import build_pair_tokenizer
    from relay_rl.cluster.kit.train_sft import encode_examples

    tok = build_pair_tokenizer()
    rows = [{"prompt": "12+34=", "answer": "46"}, {"prompt": "99+24=", "answer": "123"}]
    ids, attn, labels = encode_examples(tok, rows)
    assert ids.shape == attn.shape == labels.shape == (2, 7)  # longest: 4 prompt + 2 answer + EOS
    answer = [t for t in labels[1].tolist() if t != -100]
    assert tok.convert_ids_to_tokens(answer) == ["12", "3", "<eos>"]


def test_parts_are_reused_and_named(parts):
    """A second call builds nothing; unknown parts fail naming the valid ones; kit: paths map to folders/parts."""
    from relay_rl.cluster.kit.parts import KIT_PARTS
    from relay_rl.cluster.kit.paths import kit_parts_needed, resolve_kit_path
    from tests.conftest import build_kit

    stamps = {n: (parts["root"] / n / "part.json").stat().st_mtime_ns for n in PARTS}
    build_kit(parts["cfg"], parts=PARTS, log=lambda *_: pytest.fail("a complete part was rebuilt"))
    assert stamps == {n: (parts["root"] / n / "part.json").stat().st_mtime_ns for n in PARTS}
    with pytest.raises(ValueError, match="teacher_pairs"):
        build_kit(parts["cfg"], parts=("no_such_part",))
    assert set(KIT_PARTS) == {*PARTS, "reward_model"}
    assert resolve_kit_path("kit:teacher", parts["cfg"]) == str(parts["root"] / "teacher")
    assert kit_parts_needed("kit:teacher", "kit:warm_start", "/abs/path", None, "kit:teacher") == ("teacher",)
    assert kit_parts_needed("kit:train") == ()
