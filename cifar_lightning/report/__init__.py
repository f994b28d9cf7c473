"""Pictures of models and runs: the matplotlib figures (``figures``), reading TensorBoard runs back
(``runs``), the training callback that logs figures (``tensorboard_figures``) and the ``report`` command
(``command``)."""
