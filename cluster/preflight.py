"""Pre-flight checks of the models a run names, before any actor starts: a teacher that cannot load, whose
vocabulary differs from the student's (except in GOLD's cross-tokenizer mode), or a top-k beyond its vocabulary is a
``ConfigError`` naming the field and both models."""
from __future__ import annotations

from .config import ConfigError, RunConfig


def _load_tokenizer(field: str, path: str):
    from transformers import AutoConfig, AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001  (any loading failure is the user's path)
        raise ConfigError(f"{field}: cannot load {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}): give "
                          "a local model folder or a model id the cluster can download") from None


def check_teacher(cfg: RunConfig, student_path: str, teacher_path: str | None) -> None:
    needs = cfg.needs
    if not needs.teachers or not any(s.pool == "teacher" for s in needs.teachers):
        return
    s_tok, s_cfg = _load_tokenizer("model.name_or_path", student_path)
    t_tok, t_cfg = _load_tokenizer("teacher.name_or_path", teacher_path)
    t_vocab = getattr(t_cfg, "vocab_size", None) or len(t_tok)
    if needs.same_vocabulary and (s_tok.get_vocab() != t_tok.get_vocab() or
                                  getattr(s_cfg, "vocab_size", None) != getattr(t_cfg, "vocab_size", None)):
        raise ConfigError(
            f"teacher.name_or_path: the teacher's vocabulary differs from the student's (teacher {teacher_path}: "
            f"{len(t_tok)} tokens, model vocab_size {getattr(t_cfg, 'vocab_size', '?')}; student {student_path}: "
            f"{len(s_tok)} tokens, vocab_size {getattr(s_cfg, 'vocab_size', '?')}). Token-level distillation needs "
            "one vocabulary: pick a teacher of the student's family, or use algorithm.name: gold with "
            "use_uld_loss: true (cross-tokenizer)")
    for spec in needs.teachers:
        if spec.output == "topk" and spec.top_k > t_vocab:
            raise ConfigError(f"algorithm.loss_top_k: {spec.top_k} is larger than the teacher's vocabulary "
                              f"({t_vocab} tokens, {teacher_path}): use at most {t_vocab}, or 0 for the full "
                              "vocabulary")
