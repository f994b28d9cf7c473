"""Training helpers the CLI adds to every run: atomic checkpoint writes and the random generators'
states in each checkpoint (``checkpoint_io``)."""
