"""Frozen scorers: the reference policy, distillation teachers and self-teachers, one actor class for all
(``actor.py``), and cross-tokenizer scoring (``retokenize.py``)."""
