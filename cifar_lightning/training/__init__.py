"""Training helpers: what the CLI adds to every run (atomic checkpoint writes and the random
generators' states in each checkpoint, ``checkpoint_io``; the HParams summary, ``hparams_summary``),
and the callbacks a config can add (a teacher's predictions for distillation, ``distillation``)."""
