"""esper.wrap: targeting by pattern, type and predicate; host specs; clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.kasmina import KasminaLayer, kasmina_layers
from esper.wrap import host_specs, wrap


class MLPBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding="valid")
        self.same = nn.Conv1d(4, 4, 5, padding="same")
        self.body = ConvBlock(4)
        self.blocks = nn.ModuleList([nn.ModuleDict({"mlp": MLPBlock(4), "act": nn.ReLU()}) for _ in range(2)])
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 9, 9) -> (B, 2)
        x = self.body(self.stem(x))  # (B, 4, 4, 4)
        x = self.same(x.flatten(2)).transpose(1, 2)  # (B, 16, 4)
        for block in self.blocks:
            x = block["act"](block["mlp"](x))
        return self.head(x.mean(dim=1))


def names(model: nn.Module) -> list[str]:
    return [name for name, _ in kasmina_layers(model)]


def test_targets_by_pattern_type_and_predicate() -> None:
    assert names(wrap(Net(), target_modules=["blocks.*.mlp.fc2"])) == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert names(wrap(Net(), target_modules="head")) == ["head"]
    assert names(wrap(Net(), target_modules=[nn.Conv2d, nn.Conv1d])) == ["stem", "same", "body.conv"]
    assert names(wrap(Net(), target_modules=lambda n, m: isinstance(m, nn.Linear) and n.endswith("fc1"))) == [
        "blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]
    model = wrap(Net(), target_modules=["head"], residual_modules=["blocks.*.mlp", ConvBlock], seeds_per_layer=3)
    assert names(model) == ["body", "blocks.0.mlp", "blocks.1.mlp", "head"]
    assert all(layer.num_slots == 3 for _, layer in kasmina_layers(model))
    assert "blocks.0.mlp.base_layer.fc1.weight" in model.state_dict()


def test_host_specs_for_the_session_config() -> None:
    model = wrap(Net(), target_modules=[nn.Conv2d, nn.Conv1d, "head"], residual_modules=["blocks.*.mlp"])
    specs = {s["name"]: s for s in host_specs(model)}
    assert specs["stem"] == {"name": "stem", "kind": "conv2d", "in": 3, "out": 4, "kernel": 3, "stride": 2,
                             "padding": 0, "params": 3 * 4 * 9 + 4}
    assert specs["same"]["padding"] == 2 and specs["same"]["kind"] == "conv1d"
    assert specs["head"] == {"name": "head", "kind": "linear", "in": 4, "out": 2, "params": 8}
    assert specs["blocks.0.mlp"] == {"name": "blocks.0.mlp", "kind": "residual", "dim": 4,
                                     "params": 4 * 8 + 8 + 8 * 4 + 4}


def test_channel_first_residual_learns_its_extents_at_the_first_forward() -> None:
    model = wrap(Net(), residual_modules=["body"])
    with pytest.raises(ValueError, match="channel-first .* run one forward pass first"):
        host_specs(model)
    model(torch.randn(2, 3, 9, 9))
    assert host_specs(model) == [{"name": "body", "kind": "residual", "dim": 4, "spatial": [4, 4], "params": 148}]
    assert model.body.is_dormant


def test_residual_dim_from_a_mapping_and_a_bad_residual_host() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="cannot infer the feature dim of residual module '1'"):
        wrap(model, residual_modules=["1"])
    wrap(model, residual_modules={"1": 6})
    assert host_specs(model)[0]["dim"] == 6
    model(torch.randn(2, 4))

    widening = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.Linear(6, 8)), nn.Linear(8, 3))
    wrap(widening, residual_modules=["1"])
    with pytest.raises(ValueError, match=r"output shape \(2, 8\) differs from input shape \(2, 6\)"):
        widening(torch.randn(2, 4))


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"target 'blocks.\*.mlp.fc3' matches no module; closest names: "
                                         r"\[.*'blocks.0.mlp.fc2'"):
        wrap(Net(), target_modules=["blocks.*.mlp.fc3"])
    with pytest.raises(ValueError, match="target Conv3d matches no module; the model holds"):
        wrap(Net(), target_modules=[nn.Conv3d])
    with pytest.raises(ValueError, match="module 'blocks.0.act' \\(ReLU\\) cannot be wrapped: supported are "
                                         "nn.Linear, nn.Conv1d, nn.Conv2d"):
        wrap(Net(), target_modules=["blocks.0.act"])
    with pytest.raises(ValueError, match="targets overlap: 'blocks.0.mlp.fc1' lies inside 'blocks.0.mlp'"):
        wrap(Net(), target_modules=[nn.Linear], residual_modules=["blocks.0.mlp"])
    with pytest.raises(ValueError, match="matches only the root module"):
        wrap(nn.Linear(2, 2), target_modules=[nn.Linear])
    with pytest.raises(ValueError, match="nothing to wrap"):
        wrap(Net())
    with pytest.raises(TypeError, match="a target is a name pattern"):
        wrap(Net(), target_modules=[3])
    model = wrap(Net(), target_modules=["head"])
    with pytest.raises(ValueError, match="already wrapped"):
        wrap(model, target_modules=["stem"])


def test_unsupported_convs_and_shared_modules() -> None:
    with pytest.raises(ValueError, match="dilation \\(2, 2\\) is not supported"):
        wrap(nn.Sequential(nn.Conv2d(3, 3, 3, dilation=2)), target_modules=[nn.Conv2d])
    with pytest.raises(ValueError, match="kernel \\(3, 1\\) is not square"):
        wrap(nn.Sequential(nn.Conv2d(3, 3, (3, 1))), target_modules=[nn.Conv2d])
    with pytest.raises(ValueError, match="padding 'same' with the even kernel 4"):
        wrap(nn.Sequential(nn.Conv1d(3, 3, 4, padding="same")), target_modules=[nn.Conv1d])
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="module '0' is shared as '1'"):
        wrap(nn.Sequential(shared, shared), target_modules=["0"])


def test_layers_keep_their_host_and_registry_order() -> None:
    net = Net()
    head = net.head
    wrap(net, target_modules=["head", "stem"])
    assert isinstance(net.head, KasminaLayer) and net.head.get_base_layer() is head
    assert names(net) == ["stem", "head"] and net.head.spec.name == "head"
