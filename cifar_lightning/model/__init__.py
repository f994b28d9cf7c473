"""What the model is: the Keras network (``network``), the LightningModule around it (``classifier``),
the one probability function (``probabilities``), and checking and loading checkpoints (``checkpoints``,
``loading``)."""
