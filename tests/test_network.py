"""The network matches the Keras original: parameter count, shapes and Keras-default initialisation."""

import math

import pytest
import torch
from torch import nn

from cifar_lightning import CIFAR10Classifier, KerasCIFAR10CNN


def test_parameter_count_matches_keras():
    net = KerasCIFAR10CNN()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    running_stats = sum(b.numel() for name, b in net.named_buffers() if "running_" in name)
    assert trainable == 419_818
    assert running_stats == 1_024
    assert trainable + running_stats == 420_842  # Keras' "Total params"


def test_layer_order_is_conv_bn_elu_everywhere():
    net = KerasCIFAR10CNN()
    layers = [m for m in net.modules() if not isinstance(m, (nn.Sequential, KerasCIFAR10CNN))]
    kinds = ["ELU" if isinstance(m, nn.ELU) else type(m).__name__ for m in layers]
    assert kinds == (
        ["Conv2d", "BatchNorm2d", "ELU"] * 2 + ["MaxPool2d", "Dropout"]
    ) * 3 + ["Flatten", "Linear", "BatchNorm1d", "ELU", "Dropout", "Linear"]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.2, 0.2, 0.3, 0.3]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_classifier_output_shape_for_raw_and_unit_images(dtype):
    model = CIFAR10Classifier().eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_uint8_and_unit_float_inputs_give_identical_predictions():
    model = CIFAR10Classifier().eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images.float() / 255))


def test_keras_initialisation_glorot_uniform_and_zero_bias():
    torch.manual_seed(0)
    net = KerasCIFAR10CNN()
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            receptive = module.weight[0, 0].numel()
            fan_in, fan_out = module.weight.shape[1] * receptive, module.weight.shape[0] * receptive
            limit = math.sqrt(6 / (fan_in + fan_out))
            w = module.weight.detach()
            assert w.abs().max() <= limit
            # A uniform(-limit, limit) has std limit / sqrt(3); PyTorch's default (kaiming) does not.
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.15)
            assert torch.count_nonzero(module.bias) == 0


def test_batchnorm_uses_keras_momentum_and_epsilon():
    norms = [m for m in KerasCIFAR10CNN().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 7
    for bn in norms:
        assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_optimizer_is_nadam_with_keras_epsilon():
    optimizer = CIFAR10Classifier().configure_optimizers()
    assert isinstance(optimizer, torch.optim.NAdam)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.0025 and group["eps"] == 1e-7 and group["betas"] == (0.9, 0.999)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"lr": 0}, "lr must be greater than 0"), ({"dense_dropout": 1.0}, "dropout"),
     ({"conv_dropout": (0.2, -0.1, 0.3)}, "dropout"), ({"momentum": 1.0}, "momentum must be in"),
     ({"warmup_fraction": 0.0}, "warmup_fraction must be in"), ({"weight_decay": -1e-4}, "weight_decay must be"),
     ({"consistency_weight": -1.0}, "consistency_weight must be at least 0")],
)
def test_nonsense_settings_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CIFAR10Classifier(**kwargs)


def test_fast_cpu_elu_matches_torch_elu_in_value_and_gradient():
    from cifar_lightning.model.network import ExpELU

    x = torch.cat([torch.randn(10_000) * 5, torch.tensor([0.0, -0.0, 1e-8, -1e-8, 80.0, -80.0])])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.nn.functional.elu(x1).sum().backward()
    out = ExpELU()(x2)
    out.sum().backward()
    torch.testing.assert_close(out, torch.nn.functional.elu(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-6)
    assert torch.autograd.gradcheck(ExpELU(), (torch.randn(30, dtype=torch.float64, requires_grad=True),))


def test_folded_inference_network_computes_the_same_logits_without_batchnorm():
    torch.manual_seed(0)
    model = CIFAR10Classifier().eval()
    for module in model.net.modules():  # trained-looking statistics, not the identity of a fresh BatchNorm
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    folded = model.inference_net()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(model.view_logits(images, folded)[0], model(images), atol=1e-4)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # The folded copy is kept while the weights stay as they are, and made again when they change.
    assert model.inference_net() is folded
    with torch.no_grad():
        model.net.classifier[-1].bias.add_(1.0)
    refolded = model.inference_net()
    assert refolded is not folded
    with torch.inference_mode():
        assert torch.allclose(model.view_logits(images, refolded)[0], model(images), atol=1e-4)
    model.load_state_dict(before)
    assert model.inference_net() is not refolded
    assert model.train().inference_net() is model.net  # training mode: BatchNorm uses batch statistics, no folding


def test_view_consistency_is_the_jensen_shannon_divergence_of_the_two_views():
    from cifar_lightning.model.classifier import view_consistency

    torch.manual_seed(0)
    labels = torch.randint(0, 10, (6,)).repeat(2)
    same = torch.randn(6, 10).repeat(2, 1)
    assert view_consistency(same, labels).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(12, 10) * 3
    p, q = logits.softmax(1).view(2, 6, 10)
    m = (p + q) / 2
    js = 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)  # per image, from its definition
    assert view_consistency(logits, labels).item() == pytest.approx(js.mean().item(), rel=1e-5)
    assert 0 < js.max().item() <= math.log(2)


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 2, 0, 1, 3]), torch.tensor([0, 1, 2, 0, 1])])
def test_view_consistency_refuses_a_batch_that_is_not_two_views_of_each_image(labels):
    from cifar_lightning.errors import ConfigError
    from cifar_lightning.model.classifier import view_consistency

    with pytest.raises(ConfigError, match="ViewPairs"):
        view_consistency(torch.randn(len(labels), 10), labels)


def test_training_loss_adds_the_weighted_consistency_term():
    from cifar_lightning.model.classifier import view_consistency

    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    labels = torch.randint(0, 10, (4,)).repeat(2)
    plain = CIFAR10Classifier(label_smoothing=0.1, conv_dropout=(0, 0, 0), dense_dropout=0.0)
    weighted = CIFAR10Classifier(label_smoothing=0.1, conv_dropout=(0, 0, 0), dense_dropout=0.0, consistency_weight=12.0)
    weighted.load_state_dict(plain.state_dict())
    plain.train(), weighted.train()
    with torch.no_grad():
        base = plain.training_step((images, labels), 0)["loss"]
        total = weighted.training_step((images, labels), 0)["loss"]
        term = view_consistency(weighted(images), labels)
    assert term > 0
    assert total.item() == pytest.approx(base.item() + 12.0 * term.item(), rel=1e-4)
