import pytest
import torch

from condense.core.artifact import load, save
from condense.core.transforms import apply_
from condense.errors import ConfigError
from condense.fusion import FuseConfig, FusedBlock
from condense.prune.layers import LayerDropConfig
from condense.quantize.dynamic import DynamicInt8Config
from condense.tasks.gpt import GPT, GPTConfig, generate

CFG = GPTConfig(block_size=32, n_layer=3, n_head=2, n_embd=16)


def _gpt(seed=0):
    torch.manual_seed(seed)
    m = GPT(CFG).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a wrong concatenation order would show
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_fused_blocks_match_the_original_with_and_without_cache():
    ref = _gpt()
    fused = apply_(_gpt(), FuseConfig())
    assert all(type(b) is FusedBlock for b in fused.blocks)
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randint(0, 256, (3, 20))
    with torch.no_grad():
        assert torch.allclose(fused(x), ref(x), atol=1e-5)
    prompt = torch.randint(0, 256, (2, 5))
    assert torch.equal(generate(fused, prompt, 40), generate(ref, prompt, 40))  # past block_size: cache restarts


def test_fuse_after_layer_drop_saves_and_loads(tmp_path):
    m = apply_(_gpt(), LayerDropConfig(keep=(0, 2), criterion="last"))
    m = apply_(m, FuseConfig())
    d = save(m, tmp_path / "a")
    back = load(d, model=GPT(CFG))
    assert len(back.blocks) == 2 and all(type(b) is FusedBlock for b in back.blocks)
    x = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_quantized_linears_inside_a_fused_block_still_run():
    ref = apply_(_gpt(), FuseConfig())
    q = apply_(apply_(_gpt(), FuseConfig()), DynamicInt8Config())
    assert type(q.blocks[0].qkv) is not torch.nn.Linear
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        a, b = ref(x), q(x)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_nothing_to_fuse_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"found no block it knows how to fuse.*FUSERS\.register\(MyBlock\)"):
        apply_(torch.nn.Sequential(torch.nn.Linear(2, 2)), FuseConfig())
    q = apply_(_gpt(), DynamicInt8Config())
    with pytest.raises(ConfigError, match="apply it before quantization"):
        apply_(q, FuseConfig())


def test_a_fresh_process_loads_a_fused_artifact_through_the_blocks_own_registration(tmp_path):
    """The fuser is registered by condense/tasks/gpt.py, not by condense.fusion: loading in a process that imported
    nothing but condense still finds it, because rebuilding the recorded task imports the model's module."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from condense.core import lineage
    from condense.tasks.tinygpt import make_task

    task = make_task("tiny")
    torch.manual_seed(0)
    model = task.build_skeleton().eval()  # random weights: the architecture is what matters here
    lineage.set_task(model, task.spec)
    fused = apply_(model, FuseConfig())
    x = torch.randint(0, 256, (2, 10))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = fused(x)
    save(fused, tmp_path / "a")
    code = ("import sys, torch, condense\n"
            "m = condense.load(sys.argv[1])\n"
            "print(sorted({type(b).__name__ for b in m.blocks}))\n"
            "with torch.no_grad(): torch.save(m(torch.load(sys.argv[2])), sys.argv[3])\n")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "x.pt"),
                        str(tmp_path / "y.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['FusedBlock']"
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
