"""Early exit on a torchvision-style ResNet (condense did not write it): the generic block-list CNN splitter."""
import pytest
import torch
from torch import nn

import condense
from condense.early_exit import EarlyExitConfig, EarlyExitModel, early_exit_
from condense.early_exit.cnn import GapHead
from condense.errors import ConfigError
from condense.testing.zoo import ResNet, zoo_task
from condense.train.loop import FitConfig


def test_resnet_gets_pool_linear_exits_threshold_one_is_the_model_and_round_trips(tmp_path):
    task = zoo_task("resnet", small=True, root=tmp_path / "zoo")  # widths (8, 16): two blocks, one exit
    model = task.build_model().eval()
    x = task.batch(6)
    with torch.no_grad():
        ref = model(x)
    wrapped = early_exit_(model, EarlyExitConfig(threshold=1.0, finetune=FitConfig(steps=2, lr=1e-2)), task=task)
    assert isinstance(wrapped, EarlyExitModel) and wrapped.exits == (0,) and isinstance(wrapped.heads[0], GapHead)
    assert wrapped.heads[0].fc.in_features == 8 and wrapped.heads[0].fc.out_features == 10
    with torch.no_grad():
        assert torch.allclose(wrapped(x), ref, atol=1e-5) and wrapped.exit_counts == [0, 6]  # never early
        wrapped.threshold = 0.0
        first = wrapped.all_exits(x)[0]
        assert torch.equal(wrapped(x), first) and wrapped.exit_counts[0] == 6  # everyone leaves at the exit
    loaded = condense.load(condense.save(wrapped, tmp_path / "ee"), task=task)  # threshold 1.0, as recorded
    with torch.no_grad():
        assert loaded.threshold == 1.0 and torch.allclose(loaded(x), ref, atol=1e-5)
        assert torch.allclose(loaded.all_exits(x)[0], first, atol=1e-6)  # the trained exit head came back


class _MaxPoolHead(ResNet):
    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for block in self.layers:
            x = block(x)
        return self.fc(torch.amax(x, dim=(2, 3)))  # not global average pooling


def test_cnn_whose_head_is_not_pool_then_linear_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="not global average pooling then its last Linear"):
        EarlyExitModel(_MaxPoolHead((8, 16)).eval())
    with pytest.raises(ConfigError, match="no early-exit splitter"):
        EarlyExitModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(3)))
