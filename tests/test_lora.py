"""LoRA mechanism (zoetrope.adapters.lora): maths against hand computations, attach/merge/detach/unmerge, stacking,
conv LoRA, and training injection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_tiny_motion_modules, make_tiny_unet
from zoetrope.adapters.lora import LoRALayer, LoRANetwork, inject_lora
from zoetrope.errors import CheckpointError, ConfigError


def _random_pair(generator: torch.Generator, out_features: int, in_features: int, rank: int, kernel=None):
    down_shape = (rank, in_features) if kernel is None else (rank, in_features, *kernel)
    up_shape = (out_features, rank) if kernel is None else (out_features, rank, 1, 1)
    return torch.randn(down_shape, generator=generator), torch.randn(up_shape, generator=generator)


def _linear_network(linear: nn.Linear, name: str, rank: int, alpha, scale: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    down, up = _random_pair(generator, linear.out_features, linear.in_features, rank)
    network = LoRANetwork(rank=rank, alpha=alpha, scale=scale)
    network.add_layer(name, LoRALayer(down, up, alpha))
    return network, down, up


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 5)
        self.conv3 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.conv3(x))


@pytest.mark.parametrize("alpha, multiplier", [(None, 1.0), (8.0, 2.0)])
def test_linear_maths_matches_hand_computation(alpha, multiplier):
    """Official (alpha=None): W + s·up@down; kohya (alpha=8, rank 4): W + s·(8/4)·up@down."""
    model = nn.Sequential(nn.Linear(6, 5))
    network, down, up = _linear_network(model[0], "0", rank=4, alpha=alpha, scale=0.7, seed=1)
    x = torch.randn(3, 6)
    expected = x @ (model[0].weight + 0.7 * multiplier * up @ down).T + model[0].bias
    network.attach(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    network.detach()
    network.merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_lora_kxk_matches_merged_kernel():
    """3x3 stride-2 conv: down is a 3x3 conv with the base stride/padding, up a 1x1 conv.

    The result equals one convolution with the kernel W + s·up∘down."""
    model = Tiny()
    generator = torch.Generator().manual_seed(2)
    down, up = _random_pair(generator, 4, 3, 2, kernel=(3, 3))
    network = LoRANetwork(scale=0.5)
    network.add_layer("conv3", LoRALayer.for_module(model.conv3, 2))
    with torch.no_grad():
        network.layers["conv3"].down.copy_(down)
        network.layers["conv3"].up.copy_(up)
    x = torch.randn(2, 3, 8, 8)
    merged_kernel = model.conv3.weight + 0.5 * torch.einsum("or,rihw->oihw", up[:, :, 0, 0], down)
    expected = model.conv1(F.conv2d(x, merged_kernel, model.conv3.bias, stride=2, padding=1))
    network.attach(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    network.merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_conv_lora_respects_padding_mode():
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    model = nn.Sequential(conv)
    network = inject_lora(model, "0", rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        network.layers["0"].up.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 2, 5, 5)
    attached = model(x)
    network.merge(model)
    torch.testing.assert_close(attached, model(x), rtol=1e-5, atol=1e-5)


def _random_unet_network(unet: nn.Module, rank: int, alpha, scale: float, seed: int) -> LoRANetwork:
    """LoRA on attention projections, 1x1 proj_in convs and 3x3 resnet convs, with non-zero up weights."""
    network = inject_lora(
        unet,
        r"(attn[12]\.to_(q|k|v|out\.0)|proj_in|resnets\.0\.conv1)$",
        rank=rank,
        alpha=alpha,
        scale=scale,
        freeze_base=False,
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 100)
        for _, layer in network.named_layers():
            layer.up.copy_(torch.randn(layer.up.shape, generator=generator) * 0.1)
    return network


def _unet_inputs():
    generator = torch.Generator().manual_seed(5)
    return (
        torch.randn(2, 4, 8, 8, generator=generator),
        torch.tensor([10, 500]),
        torch.randn(2, 5, 32, generator=generator),
    )


def test_attach_equals_merge_and_detach_is_bit_exact_on_a_diffusers_unet():
    unet = make_tiny_unet()
    sample, timestep, text = _unet_inputs()
    before_state = {key: value.clone() for key, value in unet.state_dict().items()}
    with torch.no_grad():
        base = unet(sample, timestep, text).sample
        network = _random_unet_network(unet, rank=4, alpha=2.0, scale=0.8, seed=3)
        kinds = {layer.is_conv for _, layer in network.named_layers()}
        assert kinds == {True, False}
        attached = unet(sample, timestep, text).sample
        assert (attached - base).abs().max() > 1e-3
        # Attaching renamed nothing and changed no weight.
        assert list(unet.state_dict()) == list(before_state)
        assert all(torch.equal(unet.state_dict()[k], v) for k, v in before_state.items())
        network.detach()
        assert torch.equal(unet(sample, timestep, text).sample, base)
        network.attach(unet)
        network.merge(unet)
        assert not network.is_attached and network.is_merged
        merged = unet(sample, timestep, text).sample
        torch.testing.assert_close(merged, attached, rtol=1e-4, atol=1e-5)
        network.unmerge(unet)
        for key, value in unet.state_dict().items():
            torch.testing.assert_close(value, before_state[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(unet(sample, timestep, text).sample, base, rtol=1e-4, atol=1e-5)


def test_two_stacked_networks_add_and_detach_independently():
    model = nn.Sequential(nn.Linear(6, 5))
    first, down1, up1 = _linear_network(model[0], "0", rank=3, alpha=None, scale=0.5, seed=1)
    second, down2, up2 = _linear_network(model[0], "0", rank=2, alpha=4.0, scale=-1.5, seed=2)
    x = torch.randn(4, 6)
    with torch.no_grad():
        base = model(x)
        first.attach(model)
        second.attach(model)
        expected = x @ (model[0].weight + 0.5 * up1 @ down1 - 1.5 * 2.0 * up2 @ down2).T + model[0].bias
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        first.merge(model)  # one merged, one hooked: same function
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        second.detach()
        torch.testing.assert_close(model(x), x @ (model[0].weight).T + model[0].bias)
        first.unmerge(model)
        torch.testing.assert_close(model(x), base, rtol=0, atol=1e-6)


def test_scale_is_read_at_call_time():
    model = nn.Sequential(nn.Linear(6, 5))
    network, down, up = _linear_network(model[0], "0", rank=2, alpha=None, scale=1.0, seed=4)
    x = torch.randn(2, 6)
    with torch.no_grad():
        base = model(x)
        network.attach(model)
        network.scale = 0.0
        assert torch.equal(model(x), base)
        network.scale = 2.0
        torch.testing.assert_close(model(x), base + 2.0 * x @ (up @ down).T, rtol=1e-5, atol=1e-5)


def test_unmerge_uses_the_scale_of_the_merge():
    model = nn.Sequential(nn.Linear(6, 5))
    weight = model[0].weight.detach().clone()
    network, _, _ = _linear_network(model[0], "0", rank=2, alpha=None, scale=0.3, seed=5)
    network.merge(model)
    network.scale = 5.0  # changing the knob after merging must not corrupt the unmerge
    network.unmerge(model)
    torch.testing.assert_close(model[0].weight, weight, rtol=0, atol=1e-6)


def test_inject_lora_trains_only_lora_and_starts_as_identity():
    modules = make_tiny_motion_modules()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2 * 3, 32, 4, 4, generator=generator)  # (b f) c h w for down block 0
    block = modules.down_blocks[0].motion_modules[0]
    with torch.no_grad():
        base = block(tokens, num_frames=3)
    network = inject_lora(modules, r"\.attentions\.\d+\.to_(q|k|v|out)$", rank=4, alpha=4.0, generator=generator)
    names = network.target_names()
    assert len(names) == 4 * 2 * modules.num_modules()
    assert all(name.endswith(("to_q", "to_k", "to_v", "to_out")) for name in names)
    assert not any(parameter.requires_grad for parameter in modules.parameters())
    assert all(parameter.requires_grad for parameter in network.parameters())
    # up starts at zero: the output is unchanged bit for bit; down is random (Kaiming).
    assert all(torch.count_nonzero(layer.up) == 0 and layer.down.std() > 0 for _, layer in network.named_layers())
    assert torch.equal(block(tokens, num_frames=3), base)
    # Gradients reach the LoRA, and one step moves the output.
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    loss = block(tokens, num_frames=3).square().mean()
    loss.backward()
    assert any(layer.up.grad is not None and layer.up.grad.abs().sum() > 0 for _, layer in network.named_layers())
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(block(tokens, num_frames=3), base)
    network.detach()
    with torch.no_grad():
        assert torch.equal(block(tokens, num_frames=3), base)


def test_inject_lora_is_deterministic_given_a_generator_and_accepts_a_predicate():
    def target(name: str, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d)

    first = inject_lora(Tiny(), target, rank=2, init="gaussian", generator=torch.Generator().manual_seed(7))
    second = inject_lora(Tiny(), target, rank=2, init="gaussian", generator=torch.Generator().manual_seed(7))
    assert first.target_names() == ["conv3", "conv1"]
    for (_, a), (_, b) in zip(first.named_layers(), second.named_layers(), strict=True):
        assert torch.equal(a.down, b.down)


def test_network_state_dict_round_trip_and_key_names():
    network = inject_lora(Tiny(), r"conv", rank=2, generator=torch.Generator().manual_seed(1))
    assert sorted(network.state_dict()) == sorted(
        ["layers.conv3.down", "layers.conv3.up", "layers.conv1.down", "layers.conv1.up"]
    )
    modules = make_tiny_motion_modules()
    motion = inject_lora(modules, r"to_q$", rank=2, generator=torch.Generator().manual_seed(1))
    key = "layers.down_blocks__0__motion_modules__0__transformer_blocks__0__attentions__0__to_q.down"
    assert key in motion.state_dict()
    copy = inject_lora(make_tiny_motion_modules(), r"to_q$", rank=2)
    copy.load_state_dict(motion.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), motion.state_dict().values(), strict=True))


def test_errors():
    model = Tiny()
    with pytest.raises(ConfigError, match="matched no"):
        inject_lora(model, r"nothing_here", rank=2)
    with pytest.raises(ConfigError, match="rank"):
        inject_lora(model, r"conv", rank=0)
    network = inject_lora(model, r"proj", rank=2)
    with pytest.raises(ConfigError, match="already attached"):
        network.attach(model)
    network.detach()
    with pytest.raises(ConfigError, match="not merged"):
        network.unmerge(model)
    other = nn.Sequential()
    other.add_module("proj", nn.Linear(7, 5))
    with pytest.raises(CheckpointError, match=r"'proj' has down \(2, 6\)"):
        network.attach(other)
    with pytest.raises(CheckpointError, match="does not have"):
        network.attach(nn.Sequential())
    assert not network.is_attached
