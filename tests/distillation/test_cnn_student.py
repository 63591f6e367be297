"""Students of a CNN built of stages: blocks that change the tensor shape (downsampling) are never dropped."""
import pytest
import torch

from condense.core.transforms import TransformContext
from condense.distillation import DistillConfig
from condense.distillation.students import build_student, shape_changing_blocks
from condense.errors import ConfigError
from condense.testing.zoo import BasicBlock, ResNet, zoo_task


def _resnet_task(tmp_path):
    return zoo_task("resnet", small=True, root=tmp_path)  # widths (8, 16): block 0 keeps 8 ch, block 1 8 -> 16, /2


def _net():
    torch.manual_seed(0)
    net = ResNet((8, 16))
    net.layers = torch.nn.ModuleList([BasicBlock(8, 8), BasicBlock(8, 16, stride=2), BasicBlock(16, 16),
                                      BasicBlock(16, 16)])  # only block 1 changes the shape (channels, /2)
    return net.eval()


def test_downsampling_blocks_are_found_on_a_calibration_batch(tmp_path):
    task = _resnet_task(tmp_path)
    net = _net()
    assert shape_changing_blocks(net, "layers", TransformContext(task=task)) == [1]
    assert shape_changing_blocks(net, "layers", None) == []  # no data: nothing known


def test_student_keeps_shape_changing_blocks_and_runs(tmp_path):
    task = _resnet_task(tmp_path)
    net = _net()
    ctx = TransformContext(task=task)
    student, d = build_student(net, DistillConfig(layers=2), ctx)
    assert d["kept"] == [1, 3] and len(student.layers) == 2  # block 1 plus one free block spread: the last
    with pytest.warns(UserWarning, match=r"keeps 2 blocks, not layers=1: blocks \[0, 1\]"):
        student, d = build_student(_two_fixed(), DistillConfig(layers=1), ctx)
    assert d["kept"] == [0, 1] and d["shape_changing_kept"] == [0, 1]
    student, d = build_student(net, DistillConfig(layers=1), ctx)
    assert d["kept"] == [1]  # the one block that must stay is the student
    x = task.batch(4)
    assert student(x).shape == net(x).shape == (4, 10)
    with pytest.raises(ConfigError, match=r"change the tensor shape.*layers=\(0, 1, 3\)"):
        build_student(net, DistillConfig(layers=(0, 3)), ctx)


def _two_fixed():
    net = ResNet((8, 16))  # block 0: 8 -> 8, block 1: 8 -> 16 /2
    net.layers[0] = BasicBlock(8, 8, stride=2)
    return net.eval()
