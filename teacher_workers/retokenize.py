"""Cross-tokenizer scoring (GOLD's ULD): the teacher reads the same text in its own tokens.

For every row: the prompt and the completion text are tokenised with the teacher's tokenizer (EOS appended when the
student's completion ended with EOS, unless ``skip_teacher_eos``; the student's EOS left out with
``skip_student_eos``), the teacher scores its own completion tokens, the two tokenisations are aligned by byte offsets
(``learner.uld.alignment_groups``), and the teacher side of every group is merged into one probability vector, sorted
in descending order (top ``loss_top_k`` kept, if set). What travels to the learner is small: (N, Tc, k) sorted group
probabilities and the student tokens' group numbers (N, Tc). The hybrid mode (``hybrid``) also sends the merged
probabilities at the M vocabulary entries both tokenizers share, by the same text (N, Tc, M), with the student's ids
of those entries; the sorted part then holds the teacher's other entries only.
"""

from __future__ import annotations

import torch

from relay_rl.batch import Batch, prompt_token_ids
from relay_rl.learner.logprobs import completion_logits, scaled_log_softmax
from relay_rl.learner.uld import alignment_groups, merge_groups, token_byte_spans


def _tokenizers(worker):
    if not hasattr(worker, "_tokenizers"):
        from transformers import AutoTokenizer

        worker._tokenizers = (
            AutoTokenizer.from_pretrained(worker.student_tokenizer),
            AutoTokenizer.from_pretrained(worker.model_path),
        )
    return worker._tokenizers


def shared_vocabulary(s_tok, t_tok, t_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries both vocabularies have, by their text (TRL's hybrid ULD mapping): (teacher ids sorted, the
    student's ids of the same entries). Only teacher ids below `t_rows`, the rows of the teacher's output layer."""
    s_vocab = s_tok.get_vocab()
    pairs = sorted(
        (t_id, s_vocab[text]) for text, t_id in t_tok.get_vocab().items() if text in s_vocab and t_id < t_rows
    )
    return torch.tensor([t for t, _ in pairs], dtype=torch.long), torch.tensor([s for _, s in pairs], dtype=torch.long)


@torch.no_grad()
def score_retokenized(worker, batch: Batch, spec: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The served tensors, and what the batch's info gets (the teacher's vocabulary size, for the hybrid's weights)."""
    s_tok, t_tok = _tokenizers(worker)
    T, k, strategy = float(spec.get("temperature") or 1.0), int(spec.get("top_k") or 0), spec.get("merge", "observed")
    N, Tc = batch.completion_ids.shape
    s_eos, t_eos = s_tok.eos_token_id, t_tok.eos_token_id
    hybrid = bool(spec.get("hybrid"))
    t_matched, s_matched = shared_vocabulary(s_tok, t_tok, worker.vocab_size) if hybrid else (None, None)
    sorted_ids = torch.arange(worker.vocab_size)
    if hybrid:  # the sorted part: the teacher's entries the student's vocabulary lacks
        keep = torch.ones(worker.vocab_size, dtype=torch.bool)
        keep[t_matched] = False
        sorted_ids = sorted_ids[keep]
    width = min(k, len(sorted_ids)) if k else len(sorted_ids)
    dist_NGK = torch.zeros((N, Tc, width))
    matched_NGM = torch.zeros((N, Tc, len(t_matched))) if hybrid else None
    groups_NT = torch.zeros((N, Tc), dtype=torch.int32)
    for i in range(N):
        n = int(batch.completion_mask[i].sum())
        s_ids = batch.completion_ids[i, :n].tolist()
        ends_with_eos = bool(s_ids) and s_ids[-1] == s_eos
        if ends_with_eos and spec.get("skip_student_eos"):
            s_ids = s_ids[:-1]  # its position gets no group: it stays out of the loss
        s_pieces = [s_tok.decode([t], skip_special_tokens=True) for t in s_ids]
        eos = [t_eos] if ends_with_eos and not spec.get("skip_teacher_eos") else []
        t_ids = t_tok("".join(s_pieces), add_special_tokens=False)["input_ids"] + eos
        t_pieces = [t_tok.decode([t], skip_special_tokens=True) for t in t_ids]
        groups = alignment_groups(token_byte_spans(s_pieces), token_byte_spans(t_pieces))
        if not groups or not t_ids:
            continue
        p_ids = prompt_token_ids(t_tok, batch.prompts[i])
        dev = worker.device
        logits_1TV = completion_logits(
            worker.model,
            torch.tensor([p_ids], device=dev),
            torch.ones((1, len(p_ids)), dtype=torch.long, device=dev),
            torch.tensor([t_ids], device=dev),
            torch.ones((1, len(t_ids)), device=dev),
        )
        logp_TV = scaled_log_softmax(logits_1TV[0], T)
        q_GV = merge_groups(logp_TV, t_ids, [tg for _, tg in groups], strategy)  # (G, V_t)
        G = len(groups)
        dist_NGK[i, :G] = (
            q_GV[:, sorted_ids.to(q_GV.device)].sort(dim=-1, descending=True).values[:, :width].float().cpu()
        )
        if hybrid:
            matched_NGM[i, :G] = q_GV[:, t_matched.to(q_GV.device)].float().cpu()
        for g, (sg, _) in enumerate(groups, start=1):
            groups_NT[i, sg] = g
    out = {"teacher_dist": dist_NGK, "uld_groups": groups_NT}
    if hybrid:
        out.update(teacher_matched=matched_NGM, uld_matched_ids=s_matched.to(torch.int32).expand(N, -1).contiguous())
    return out, {"uld_teacher_vocab": worker.vocab_size}
