"""The quickstart kit: a local character tokenizer, a tiny Qwen3 model, the ``a+b=`` task and an SFT warm start,
with optional parts (distillation teachers, a reward model, a code task), built on this machine with no hub.

    paths        where a kit lives and what ``kit:`` paths name (what the run file, data and pools resolve)
    task         tokenizers, models, the task and its splits
    parts        the optional parts' settings and how each is trained
    build        ``ensure_kit``: build what is missing, reuse what is complete
    code_task    the ``a+b=`` prompts as a program to write (``kit:code_train``, ``kit:code_test``)
    train_sft, train_reward   the parts' small single-process trainers
"""
