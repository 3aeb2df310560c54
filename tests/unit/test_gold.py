"""GOLD's cross-tokenizer loss through relay-rl's whole path, against TRL's own ``ULDLoss``
(docs/methods/distillation.md, GOLD), and ``loss_top_k: 1`` against TRL's top-1 divergence.

The pipeline under test is the one a run uses: the teacher's ``score_retokenized`` (re-tokenises the student's text in
the teacher's tokens, scores it with a real model, aligns by bytes, merges, sorts, serves the shared-vocabulary
entries for the hybrid mode) and the learner's ``DistillObjective.loss``. The tokenizers are the kit's: a character
tokenizer (14 entries) for the student and the digit-pair tokenizer (114 entries, 14 shared) for the teacher; the
models are tiny random Qwen3s in float64. The reference is TRL 1.16's ``ULDLoss`` on the same text and weights, its
inputs built independently (the teacher's token offsets from the tokenizer's offset mapping, the full sequences run
unpadded). Two conventions are bridged, not hidden:

* TRL's "observed" strategy reads the logits at the token's own position (the distribution of the *next* token);
  relay-rl reads the distribution that predicted the token. TRL is given logits shifted one position to the right,
  which makes its slice the predicting one ("bayesian" slices correctly and needs no shift).
* The teacher serves float32 (as in a run), so agreement is to float32 precision; each check also shows that a
  wrong placement (a temperature, the EOS, the weights) would be seen.

Rows that end without EOS (truncated) differ on purpose: TRL's ``uld_skip_student_eos`` drops the last token of every
row, relay-rl drops it only when it is the EOS; ``test_truncated_rows_keep_their_last_token`` pins that.
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from relay_rl.batch import Batch
from relay_rl.cluster.config import resolve_schedule, validate_dict
from relay_rl.cluster.kit.task import build_model, build_pair_tokenizer, build_tokenizer
from relay_rl.learner.methods.distill import Distillation, DistillObjective, top1_support
from relay_rl.teacher_workers.retokenize import score_retokenized, shared_vocabulary
from tests.conftest import quickstart_dict

gold = pytest.importorskip("trl.experimental.gold.gold_trainer")
server = pytest.importorskip("trl.experimental.server_distillation.server_distillation_trainer")

TRL_TOP1 = server.ServerDistillationTrainer  # its top-1 path, called with a stand-in for ``self`` (beta, tail)
F64 = torch.float64
TINY = types.SimpleNamespace(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
    seed=0,
)
PROMPTS = ["12+34=", "7+85=", "50+50=", "3+4="]
COMPLETIONS = ["46", "92", "100", "7"]  # split groups (student "4","6" vs teacher "46"), an odd tail ("100")


@pytest.fixture(scope="module")
def parts():
    s_tok, t_tok = build_tokenizer(), build_pair_tokenizer()
    student = build_model(TINY, s_tok, seed=1).double().eval()
    teacher = build_model(TINY, t_tok, seed=2).double().eval()
    return types.SimpleNamespace(s_tok=s_tok, t_tok=t_tok, student=student, teacher=teacher)


def gold_cfg(**algorithm):
    raw = quickstart_dict(
        teacher={"name_or_path": "kit:teacher_pairs"},
        rollout={"temperature": 0.9},  # the recipe's: ULD must not use it
        cluster={"learner": {"replicas": 1, "num_cpus": 0.5}},
    )
    raw["algorithm"] = {"name": "gold", "use_uld_loss": True, "per_device_train_batch_size": 4, **algorithm}
    cfg = validate_dict(raw)
    return cfg, resolve_schedule(cfg)


def student_batch(s_tok, completions, eos=True) -> Batch:
    """Rows as the rollout pool makes them: left-padded prompts, right-padded completions (EOS kept when it
    stopped)."""
    c_rows = [
        s_tok(c, add_special_tokens=False)["input_ids"] + ([s_tok.eos_token_id] if eos else []) for c in completions
    ]
    p_rows = [s_tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    N, Tp, Tc = len(c_rows), max(map(len, p_rows)), max(map(len, c_rows))
    prompt_ids, prompt_mask = torch.zeros(N, Tp, dtype=torch.long), torch.zeros(N, Tp, dtype=torch.long)
    completion_ids, completion_mask = torch.zeros(N, Tc, dtype=torch.long), torch.zeros(N, Tc)
    for i, (p, c) in enumerate(zip(p_rows, c_rows)):
        prompt_ids[i, Tp - len(p) :], prompt_mask[i, Tp - len(p) :] = torch.tensor(p), 1
        completion_ids[i, : len(c)], completion_mask[i, : len(c)] = torch.tensor(c), 1
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=torch.zeros(N, Tc),
        policy_version=torch.zeros(N, dtype=torch.long),
        group_id=torch.arange(N),
        truncated=torch.tensor([not eos] * N),
        prompts=list(PROMPTS),
        completions=list(completions),
    )


def relay_loss(parts, cfg, sched, batch: Batch) -> torch.Tensor:
    """The teacher pool's scoring, then the learner's objective on the student's float64 logits."""
    spec = dataclasses.asdict(Distillation().needs(cfg).teachers[0])
    worker = types.SimpleNamespace(
        _tokenizers=(parts.s_tok, parts.t_tok), model=parts.teacher, device="cpu", vocab_size=len(parts.t_tok)
    )
    served, info = score_retokenized(worker, batch, spec)
    mb = batch.replace(**served, info={**batch.info, **info})
    N, Tc = batch.completion_ids.shape
    logits = torch.zeros(N, Tc, len(parts.s_tok), dtype=F64)
    for i in range(N):  # each row unpadded: the distribution that predicted completion token t
        p = batch.prompt_ids[i, batch.prompt_mask[i] > 0]
        n = int(batch.completion_mask[i].sum())
        full = torch.cat([p, batch.completion_ids[i, :n]]).unsqueeze(0)
        logits[i, :n] = parts.student(full).logits[0, len(p) - 1 : len(p) + n - 1]
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb])
    loss, stats = obj.loss(mb, logits)
    return loss.detach() * sched.GA, stats


def trl_loss(parts, cfg, batch: Batch, hybrid_tokenizers: bool) -> torch.Tensor:
    """TRL's ULDLoss over the same rows (one right-padded batch), its inputs built from text."""
    a = cfg.algorithm
    s_tok, t_tok = parts.s_tok, parts.t_tok
    rows = []
    for i, prompt in enumerate(batch.prompts):
        n = int(batch.completion_mask[i].sum())
        s_c = batch.completion_ids[i, :n].tolist()
        s_p = s_tok(prompt, add_special_tokens=False)["input_ids"]
        text = s_tok.decode(s_c, skip_special_tokens=True)
        s_off = [(0, 0)] * len(s_p)
        pos = 0
        for tok in s_c:  # the student's byte offsets: each token's decoded text, EOS zero-width at the end
            piece = s_tok.decode([tok], skip_special_tokens=True)
            s_off.append((pos, pos + len(piece.encode())))
            pos += len(piece.encode())
        enc = t_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        t_p = t_tok(prompt, add_special_tokens=False)["input_ids"]
        t_c = enc["input_ids"] + [t_tok.eos_token_id]  # TRL's teacher text always gets EOS
        t_off = [(0, 0)] * len(t_p) + list(enc["offset_mapping"]) + [(len(text), len(text))]
        rows.append((s_p + s_c, len(s_p), s_off, t_p + t_c, len(t_p), t_off))

    def side(seqs, starts, offs, model, V):
        L = max(map(len, seqs))
        ids, labels = torch.zeros(len(seqs), L, dtype=torch.long), torch.full((len(seqs), L), -100)
        logits, off = torch.zeros(len(seqs), L, V, dtype=F64), torch.zeros(len(seqs), L, 2, dtype=torch.long)
        for i, (seq, start, o) in enumerate(zip(seqs, starts, offs)):
            ids[i, : len(seq)], labels[i, start : len(seq)] = torch.tensor(seq), torch.tensor(seq[start:])
            lg = model(torch.tensor([seq])).logits[0]
            if a.uld_token_merge_strategy == "observed":  # TRL's observed slice reads one position late
                lg = torch.cat([lg[:1], lg[:-1]])
            logits[i, : len(seq)], off[i, : len(seq)] = lg, torch.tensor(o)
        return logits, labels, ids, off

    s_logits, s_labels, s_ids, s_off = side(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], parts.student, len(s_tok)
    )
    t_logits, t_labels, t_ids, t_off = side(
        [r[3] for r in rows], [r[4] for r in rows], [r[5] for r in rows], parts.teacher, len(t_tok)
    )
    trl_cfg = types.SimpleNamespace(
        **{k: getattr(a, k) for k in type(a).model_fields if k.startswith("uld_")}, use_extended_uld=True, beta=a.beta
    )
    toks = (s_tok, t_tok) if hybrid_tokenizers else (None, None)
    uld = gold.ULDLoss(trl_cfg, *toks)
    return uld(s_logits, t_logits, s_labels, t_labels, s_ids, t_ids, s_off, t_off).detach(), uld


# ----------------------------------------------------------------------------------------------- ULD
@pytest.mark.parametrize("strategy", ["observed", "bayesian"])
@pytest.mark.parametrize(
    "knobs",
    [
        {},  # TRL's defaults: temperatures 1, both EOS skipped
        {"uld_student_temperature": 0.7, "uld_teacher_temperature": 1.3},
        {"uld_skip_student_eos": False, "uld_skip_teacher_eos": False},  # EOS as a group of its own
        {"uld_skip_student_eos": False},  # the student's EOS has no counterpart: dropped on both sides
    ],
    ids=["defaults", "temperatures", "eos-kept", "student-eos-kept"],
)
def test_uld_matches_trl(parts, strategy, knobs):
    cfg, sched = gold_cfg(uld_token_merge_strategy=strategy, **knobs)
    batch = student_batch(parts.s_tok, COMPLETIONS)
    ours, stats = relay_loss(parts, cfg, sched, batch)
    expected, _ = trl_loss(parts, cfg, batch, hybrid_tokenizers=False)
    assert float(ours.detach()) == pytest.approx(float(expected), rel=2e-5)
    assert stats["distill/uld_groups"][1] > len(PROMPTS)  # several groups per row, some of them merged


def test_uld_temperatures_are_not_the_sampling_temperature(parts):
    """The recipe samples at 0.9; ULD's temperatures are its own (TRL's defaults 1.0). Placing 0.9 would be seen."""
    batch = student_batch(parts.s_tok, COMPLETIONS)
    cfg, sched = gold_cfg()
    ours, _ = relay_loss(parts, cfg, sched, batch)
    at_sampling, _ = trl_loss(
        parts, gold_cfg(uld_student_temperature=0.9, uld_teacher_temperature=0.9)[0], batch, hybrid_tokenizers=False
    )
    assert abs(float(ours.detach()) - float(at_sampling)) > 1e-3
    assert Distillation().needs(cfg).teachers[0].temperature == 1.0


@pytest.mark.parametrize("strategy", ["observed", "bayesian"])
@pytest.mark.parametrize(
    "knobs",
    [
        {"beta": 0.5},  # adaptive weights: M / V_t = 14 / 114
        {"beta": 0.0, "uld_hybrid_matched_weight": 0.8, "uld_hybrid_unmatched_weight": 0.2},
        {"beta": 1.0, "uld_student_temperature": 0.8},
    ],
    ids=["adaptive", "fixed-forward-kl", "reverse-kl"],
)
def test_hybrid_matches_trl(parts, strategy, knobs):
    cfg, sched = gold_cfg(uld_use_hybrid_loss=True, uld_token_merge_strategy=strategy, **knobs)
    batch = student_batch(parts.s_tok, COMPLETIONS)
    ours, stats = relay_loss(parts, cfg, sched, batch)
    expected, uld = trl_loss(parts, cfg, batch, hybrid_tokenizers=True)
    assert uld._vocab_mapping is not None and len(uld._teacher_matched_ids) == 14
    assert float(ours.detach()) == pytest.approx(float(expected), rel=2e-5)
    assert stats["distill/uld_matched"][1] != 0  # (JSD of unnormalised group vectors, as TRL's: may be < 0)
    # the character student's entries all exist in the pair teacher's vocabulary: nothing of the student is unmatched,
    # so the sorted part is empty (TRL: 0) and the loss is w_m * JSD on the 14 shared entries
    assert stats["distill/uld_unmatched"][1] == 0.0
    plain, _ = relay_loss(parts, gold_cfg(uld_token_merge_strategy=strategy, **knobs)[0], sched, batch)
    assert abs(float(plain) - float(ours)) > 1e-3


def test_hybrid_sorted_part_when_both_sides_have_unmatched_entries(parts):
    """A student reading digit pairs and a teacher reading digit triples: each has entries the other lacks ("10" and
    "100"), so the sorted L1 over the unmatched entries counts, with its weight."""
    from relay_rl.cluster.kit.task import _word_level_tokenizer

    triples = _word_level_tokenizer(["<pad>", "<eos>", *"0123456789+=", *(f"{n:03d}" for n in range(1000))], r"\d{3}|.")
    t_ids, s_ids = shared_vocabulary(parts.t_tok, triples, len(triples))
    assert len(s_ids) == len(t_ids) == 14
    t_few, _ = shared_vocabulary(parts.t_tok, triples, int(t_ids[5]))  # ids past the teacher's output rows drop out
    assert t_few.tolist() == t_ids[:5].tolist()
    other = types.SimpleNamespace(
        s_tok=parts.t_tok,
        t_tok=triples,
        student=build_model(TINY, parts.t_tok, seed=3).double().eval(),
        teacher=build_model(TINY, triples, seed=4).double().eval(),
    )
    for knobs in ({}, {"uld_hybrid_matched_weight": 0.3, "uld_hybrid_unmatched_weight": 0.7}):
        cfg, sched = gold_cfg(uld_use_hybrid_loss=True, **knobs)
        batch = student_batch(other.s_tok, ["4612", "92", "100", "7123"])
        ours, stats = relay_loss(other, cfg, sched, batch)
        expected, _ = trl_loss(other, cfg, batch, hybrid_tokenizers=True)
        assert stats["distill/uld_unmatched"][1] > 0.1
        assert float(ours.detach()) == pytest.approx(float(expected), rel=2e-5)


def test_crossentropy_weight_matches_trl(parts):
    cfg, sched = gold_cfg(uld_token_merge_strategy="bayesian", uld_crossentropy_weight=0.5, uld_use_hybrid_loss=True)
    batch = student_batch(parts.s_tok, COMPLETIONS)
    ours, stats = relay_loss(parts, cfg, sched, batch)
    expected, _ = trl_loss(parts, cfg, batch, hybrid_tokenizers=True)
    assert float(ours.detach()) == pytest.approx(float(expected), rel=2e-5)
    assert stats["distill/ce"][1] > 0.5  # a random student: the CE term is large, so a wrong one would show


def test_truncated_rows_keep_their_last_token(parts):
    """A row cut at max_completion_length has no EOS: relay-rl aligns all of its tokens; TRL's skip drops the last
    real token. With the skip off, the two agree (TRL's teacher EOS then has no student counterpart: dropped)."""
    batch = student_batch(parts.s_tok, ["46", "92", "100", "71"], eos=False)
    cfg, sched = gold_cfg(uld_token_merge_strategy="bayesian", uld_skip_student_eos=False)
    ours, _ = relay_loss(parts, cfg, sched, batch)
    expected, _ = trl_loss(parts, cfg, batch, hybrid_tokenizers=False)
    assert float(ours.detach()) == pytest.approx(float(expected), rel=2e-5)
    cfg_skip, _ = gold_cfg(uld_token_merge_strategy="bayesian")
    ours_skip, _ = relay_loss(parts, cfg_skip, sched, batch)
    assert float(ours_skip) == pytest.approx(float(ours), rel=1e-12)  # no EOS: nothing to skip
    trl_skip, _ = trl_loss(parts, cfg_skip, batch, hybrid_tokenizers=False)
    assert abs(float(trl_skip) - float(ours_skip)) > 1e-4  # TRL dropped a digit


def test_recipe_uses_trl_uld_defaults():
    from relay_rl.cluster.config import load_config
    from tests.conftest import RECIPES

    a = load_config(RECIPES / "gold.yaml").algorithm
    trl_defaults = gold.GOLDConfig.__dataclass_fields__
    for knob in ("uld_student_temperature", "uld_teacher_temperature", "uld_skip_student_eos", "uld_skip_teacher_eos"):
        assert getattr(a, knob) == trl_defaults[knob].default, knob


# ----------------------------------------------------------------------------------------------- loss_top_k: 1
@pytest.mark.parametrize("beta", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("add_tail", [False, True])
def test_top1_support_matches_trl(beta, add_tail):
    """The support TRL's ServerDistillationTrainer uses for the top-1 path: the sampled token at beta = 1, else the
    teacher's top-1 and the sampled token (once when equal)."""
    g = torch.Generator().manual_seed(5)
    B, T, V = 3, 6, 9
    student = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=F64) * 2, -1)
    teacher = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=F64) * 2, -1)
    top1_lp, top1_ids = teacher.max(-1, keepdim=True)
    sampled = torch.randint(0, V, (B, T), generator=g)
    sampled[0, :3] = top1_ids[0, :3, 0]  # some positions where the sampled token is the teacher's top-1
    t_sampled = teacher.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.8, sampled, torch.full_like(sampled, -100))
    mask = (labels != -100).to(F64)

    s, t = top1_support(student, top1_lp, top1_ids.to(torch.int32), t_sampled, sampled, beta, add_tail)
    from relay_rl.learner.divergences import generalized_jsd

    ours = (generalized_jsd(s, t, beta) * mask).sum() / mask.sum()
    fake = types.SimpleNamespace(
        beta=beta,
        loss_add_tail=add_tail,
        _reduce_divergence_loss=TRL_TOP1._reduce_divergence_loss,
    )
    expected = TRL_TOP1._compute_sparse_top_1_divergence_loss(
        fake, student, top1_ids[..., 0], top1_lp[..., 0], sampled, t_sampled, labels
    )
    assert float(ours) == pytest.approx(float(expected), rel=1e-6, abs=1e-12)
    if beta == 1 and not add_tail:
        assert float(ours) == 0.0  # one entry renormalised: both sides put probability 1 on it (TRL alike)


def test_top1_through_the_objective():
    """``loss_top_k: 1`` reaches top1_support from the served batch (the teacher's top-1 ids and log-probs, and its
    log-prob of the sampled token)."""
    raw = quickstart_dict(
        teacher={"name_or_path": "kit:teacher"},
        rollout={"temperature": 1.0},
        cluster={"learner": {"replicas": 1, "num_cpus": 0.5}},
    )
    raw["algorithm"] = {
        "name": "on_policy_distillation",
        "per_device_train_batch_size": 2,
        "loss_top_k": 1,
        "loss_add_tail": True,
        "beta": 0.5,
    }
    cfg = validate_dict(raw)
    sched = resolve_schedule(cfg)
    g = torch.Generator().manual_seed(9)
    B, T, V = 2, 4, 7
    logits = torch.randn(B, T, V, generator=g, dtype=F64)
    teacher = torch.log_softmax(torch.randn(B, T, V, generator=g, dtype=F64), -1)
    top1_lp, top1_ids = teacher.max(-1, keepdim=True)
    sampled = torch.randint(0, V, (B, T), generator=g)
    mb = student_batch_like(B, T, sampled).replace(
        teacher_dist=top1_lp,
        teacher_dist_ids=top1_ids.to(torch.int32),
        teacher_logprobs=teacher.gather(-1, sampled.unsqueeze(-1)).squeeze(-1),
    )
    obj = DistillObjective(cfg, sched)
    obj.begin_step([mb])
    loss, _ = obj.loss(mb, logits)
    fake = types.SimpleNamespace(beta=0.5, loss_add_tail=True, _reduce_divergence_loss=TRL_TOP1._reduce_divergence_loss)
    expected = TRL_TOP1._compute_sparse_top_1_divergence_loss(
        fake, torch.log_softmax(logits, -1), top1_ids[..., 0], top1_lp[..., 0], sampled, mb.teacher_logprobs, sampled
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def student_batch_like(B, T, ids) -> Batch:
    return Batch(
        prompt_ids=torch.ones(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2, dtype=torch.long),
        completion_ids=ids,
        completion_mask=torch.ones(B, T),
        behaviour_logprobs=torch.zeros(B, T),
        policy_version=torch.zeros(B, dtype=torch.long),
        group_id=torch.arange(B),
        truncated=torch.zeros(B, dtype=torch.bool),
    )
