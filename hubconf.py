"""torch.hub entry points: the shipped models by name, as PyTorch users load published models.

    import torch
    model = torch.hub.load("OWNER/cifar-lightning", "cifar10_cnn_robust")             # from GitHub
    model = torch.hub.load("path/to/clone", "cifar10_cnn_robust", source="local")    # from a clone
    probabilities = model.predict_proba(uint8_images)  # (N, 3, 32, 32) -> (N, 10), calibrated

Each returns a ``CIFAR10Classifier`` in eval mode; ``pretrained=False`` gives the same network and
settings with freshly initialised weights. The weights are the package's own files
(``cifar_lightning/weights/``), so nothing is downloaded beyond the repository.
"""

dependencies = ["torch", "torchvision", "lightning", "torchmetrics", "jsonargparse", "PIL", "scipy"]

from cifar_lightning.model.hub import cifar10_cnn, cifar10_cnn_robust  # noqa: E402,F401
