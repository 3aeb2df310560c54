"""Per-token log-probs and entropies of completion tokens under a causal LM (logits / T, full vocabulary)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Concatenate left-padded prompts and right-padded completions; positions count real tokens only."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, Tp + Tc)
    attn = torch.cat([prompt_mask.long(), (completion_mask > 0).long()], dim=1)
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attn, position_ids


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(B, Tc, V) float logits: position t is the distribution that predicted completion token t."""
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    Tc = completion_ids.shape[1]
    logits = model(
        input_ids=input_ids, attention_mask=attn, position_ids=pos, logits_to_keep=Tc + 1, use_cache=False
    ).logits
    return logits[:, :-1, :].float()


def packed_completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """``completion_logits`` without padding: the rows' real tokens are laid end to end in one sequence whose
    positions restart at 0 for each row, with no attention mask, so transformers masks attention block-causally per
    row (no row sees another); logits are computed only where a completion token is predicted. Same (B, Tc, V)
    result (zeros past each row's end) as the padded forward, without computing a single pad position."""
    B, Tc = completion_ids.shape
    p_len = prompt_mask.sum(-1)  # (B,)
    c_len = (completion_mask > 0).sum(-1)  # (B,)
    if bool((p_len < 1).any()):
        raise ValueError("padding-free batches need a prompt of at least one token in every row")
    rows = [torch.cat([prompt_ids[i, prompt_mask[i] > 0], completion_ids[i, : int(c_len[i])]]) for i in range(B)]
    input_ids = torch.cat(rows).unsqueeze(0)  # (1, L)
    position_ids = torch.cat([torch.arange(len(r), device=input_ids.device) for r in rows]).unsqueeze(0)  # (1, L)
    start = torch.cumsum(p_len + c_len, 0) - (p_len + c_len)  # (B,) where each row begins
    t = torch.arange(Tc, device=input_ids.device)
    valid_BT = t.unsqueeze(0) < c_len.unsqueeze(1)  # (B, Tc)
    pos_BT = start.unsqueeze(1) + p_len.unsqueeze(1) - 1 + t.unsqueeze(0)  # the position predicting token t
    keep = pos_BT[valid_BT]  # (K,) increasing
    logits_KV = model(input_ids=input_ids, position_ids=position_ids, logits_to_keep=keep, use_cache=False).logits[0]
    out = logits_KV.new_zeros(B, Tc, logits_KV.shape[-1])
    out[valid_BT] = logits_KV
    return out.float()


def completion_values(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(B, Tc) float values of a critic (an HF sequence classifier: its backbone, then its scalar ``score`` head at
    every position): position t is the state before completion token t, as in ``completion_logits``."""
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    backbone = getattr(module, module.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    Tc = completion_ids.shape[1]
    return module.score(hidden[:, -Tc - 1 : -1]).squeeze(-1).float()


def scaled_log_softmax(logits_BTV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) over the full vocabulary (T = 0 or 1: unscaled)."""
    if temperature and temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    return F.log_softmax(logits_BTV, dim=-1)


def token_logprobs(logits_BTV, completion_ids, temperature: float = 1.0, with_entropy: bool = False):
    """log pi(o_t) (B, Tc) of the sampled tokens and, if asked, the entropy H_t (B, Tc), at temperature T."""
    logp_all = scaled_log_softmax(logits_BTV, temperature)
    logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def completion_logprobs(
    model,
    prompt_ids,
    prompt_mask,
    completion_ids,
    completion_mask,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Returns log pi(o_t) (B, Tc) and, if asked, the entropy H_t (B, Tc) of the temperature-scaled policy."""
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return token_logprobs(logits, completion_ids, temperature, with_entropy)


def fp32_lm_head(model) -> None:
    """Compute the LM head in fp32 (ScaleRL's ``cast_lm_head_to_fp32``). Works under ZeRO-3: the weight is gathered
    by DeepSpeed's pre-forward hook before this forward runs."""
    head = model.get_output_embeddings()

    def forward(hidden):
        bias = head.bias.float() if getattr(head, "bias", None) is not None else None
        return F.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward
