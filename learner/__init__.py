"""The learner: losses and math as pure functions of tensors, the method families (``methods/``), and the DeepSpeed
learner ranks (``actor.py``) and critic ranks (``critic.py``)."""
