"""The data: CIFAR-10 read from either layout (``sources``), the training augmentations (``augment``),
folders of images people bring (``folders``) and the LightningDataModule that serves them (``datamodule``)."""
