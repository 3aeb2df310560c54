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
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, logits_to_keep=Tc + 1,
                   use_cache=False).logits
    return logits[:, :-1, :].float()


def completion_values(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """(B, Tc) float values of a critic (an HF sequence classifier: its backbone, then its scalar ``score`` head at
    every position): position t is the state before completion token t, as in ``completion_logits``."""
    input_ids, attn, pos = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    backbone = getattr(module, module.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    Tc = completion_ids.shape[1]
    return module.score(hidden[:, -Tc - 1:-1]).squeeze(-1).float()


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


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature: float = 1.0,
                        with_entropy: bool = False):
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
