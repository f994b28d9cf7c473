"""Calibrated probabilities: temperature fitting and scores (``temperature``), reliability bins and
diagrams (``reliability``), a checkpoint written with its temperature (``checkpoint_file``), the ``fit``
callback (``callback``) and the ``calibrate`` command (``command``)."""
