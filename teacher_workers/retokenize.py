"""Cross-tokenizer scoring (GOLD's ULD): the teacher reads the same text in its own tokens.

For every row: the prompt and the completion text are tokenised with the teacher's tokenizer (EOS appended when the
student's completion stopped), the teacher scores its own completion tokens, the two tokenisations are aligned by
byte offsets (``learner.uld.alignment_groups``), and the teacher side of every group is merged into one
probability vector, sorted in descending order (top ``loss_top_k`` kept, if set). What travels to the learner is
small: (N, Tc, k) sorted group probabilities and the student tokens' group numbers (N, Tc).
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


@torch.no_grad()
def score_retokenized(worker, batch: Batch, spec: dict) -> dict[str, torch.Tensor]:
    s_tok, t_tok = _tokenizers(worker)
    T, k, strategy = float(spec.get("temperature") or 1.0), int(spec.get("top_k") or 0), spec.get("merge", "observed")
    N, Tc = batch.completion_ids.shape
    t_eos = t_tok.eos_token_id
    width = min(k, worker.vocab_size) if k else worker.vocab_size
    dist_NGK = torch.zeros((N, Tc, width))
    groups_NT = torch.zeros((N, Tc), dtype=torch.int32)
    for i in range(N):
        n = int(batch.completion_mask[i].sum())
        s_ids = batch.completion_ids[i, :n].tolist()
        stopped = not bool(batch.truncated[i])
        s_pieces = [s_tok.decode([t], skip_special_tokens=True) for t in s_ids]
        t_ids = t_tok("".join(s_pieces), add_special_tokens=False)["input_ids"] + ([t_eos] if stopped else [])
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
        dist_NGK[i, : len(groups)] = q_GV.sort(dim=-1, descending=True).values[:, :width].float().cpu()
        for g, (sg, _) in enumerate(groups, start=1):
            groups_NT[i, sg] = g
    return {"teacher_dist": dist_NGK, "uld_groups": groups_NT}
