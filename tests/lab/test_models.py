"""Reference models: output shapes on every input size, residual marking, and they learn."""
import pytest
import torch
import torch.nn.functional as F

import initlab
from initlab.lab.models import CIFAR_VGG_LAYERS, BasicBlock, ResNet, authors_init, build_model, vgg_stages

CASES = [
    ("mlp", dict(depth=3, width=16)),
    ("mlp", dict(depth=1, activation="tanh")),
    ("vgg", dict(depth=11, width=4)),
    ("vgg", dict(depth=13, width=4, bn=True)),
    ("resnet", dict(depth=20, width=4)),
    ("resnet", dict(depth=20, width=4, bn=True)),
]


@pytest.mark.parametrize("bn", [False, True])
def test_cifar_vgg19_is_the_papers_layer_list_at_a_width(bn):
    model = build_model("cifar-vgg", depth=19, width=16, bn=bn, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 64, 64, M, 128, 128, M, 256 x4, M, 512 x4, M, 512 x4, M, scaled by 16/64
    assert [c.out_channels for c in convs] == [16, 16, 32, 32] + [64] * 4 + [128] * 8
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 5
    assert all((c.bias is None) == bn for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == (16 if bn else 0)
    assert model.classifier.in_features == 128
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    full = build_model("cifar-vgg", depth=11, width=64, in_channels=3, image_size=32)
    widths = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [v for v in CIFAR_VGG_LAYERS[11] if v != "M"]
    with pytest.raises(ValueError, match="pad_to=32"):
        build_model("cifar-vgg", image_size=28)


@pytest.mark.parametrize("bn", [False, True])
def test_resnet32_biases_exactly_where_bn_is_absent(bn):
    model = ResNet(1, depth=32, width=16, bn=bn)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 31 and all((c.bias is None) == bn for c in convs)
    # the GradInit code's shortcut: subsample, BN (with BN only), zero channels
    downs = [b for b in model.blocks if b.stride > 1]
    assert len(downs) == 2 and all((b.shortcut_bn is not None) == bn for b in downs)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_authors_init_draws_the_gradinit_codes_constructor_init():
    torch.manual_seed(0)
    vgg = authors_init(build_model("cifar-vgg", depth=11, width=64, image_size=32, bn=True))
    for m in vgg.modules():
        if isinstance(m, torch.nn.Conv2d):   # Kaiming normal, fan_out = out * 3 * 3, ReLU gain
            expected = (2.0 / (m.out_channels * 9)) ** 0.5
            assert m.weight.std().item() == pytest.approx(expected, rel=0.1)
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert vgg.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(vgg.classifier.bias == 0)
    torch.manual_seed(0)
    resnet = build_model("resnet", depth=20, width=16)
    pytorch_fc = resnet.classifier.weight.clone()
    authors_init(resnet)
    assert all(torch.all(m.bias == 0) for m in resnet.modules()
               if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(resnet.classifier.weight, pytorch_fc)  # the ResNet keeps PyTorch's fc
    with pytest.raises(ValueError, match="constructor_init='pytorch'"):
        authors_init(build_model("mlp"))


@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_output_shape(name, kw, channels, size):
    model = build_model(name, in_channels=channels, image_size=size, num_classes=7, **kw)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_vgg_depth_counts_conv_layers():
    assert vgg_stages(11) == [2, 3, 3, 3] and sum(vgg_stages(19)) == 19
    model = build_model("vgg", depth=16, width=4, image_size=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16 and convs[-1].out_channels == 32
    bn = build_model("vgg", depth=11, width=4, bn=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 11
    assert all(m.bias is None for m in bn.modules() if isinstance(m, torch.nn.Conv2d))


def test_resnet56_without_bn_on_3x32x32():
    model = ResNet(3, depth=56, width=16, bn=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    branches = initlab.residual_branches(model)
    assert len(branches) == 27
    assert all(b.scale is not None and b.scale.item() == 1.0 for b in branches)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNet(depth=21)


def test_residual_block_computes_relu_shortcut_plus_scaled_branch():
    block = BasicBlock(4, 8, stride=2)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        block.scale.fill_(0.0)
    shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 4))  # subsample, zero new channels
    torch.testing.assert_close(block(x), F.relu(shortcut))
    with torch.no_grad():
        block.scale.fill_(0.5)
    torch.testing.assert_close(block(x), F.relu(shortcut + 0.5 * block.branch(x)))


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="available"):
        build_model("densenet")
    with pytest.raises(ValueError, match="MLP"):
        build_model("vgg", activation="tanh")
    with pytest.raises(ValueError, match="batch-norm"):
        build_model("mlp", bn=True)


@pytest.mark.parametrize("name,kw", [("mlp", dict(depth=3, width=32)),
                                     ("vgg", dict(depth=11, width=4, bn=True)),
                                     ("resnet", dict(depth=20, width=4))])
def test_a_few_steps_reduce_the_loss(name, kw):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model = build_model(name, image_size=8, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
