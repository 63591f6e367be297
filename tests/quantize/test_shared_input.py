"""`SharedInputLinears`: q/k/v as one stacked low-bit matmul, bit for bit what the layers give one by one."""
import copy

import pytest
import torch
from torch import nn

import condense
from condense.quantize import quantize_
from condense.quantize.weight_only import WeightOnlyConfig, WeightOnlyLinear, rtn_quantize
from condense.quantize.weight_only.kernels import DEQUANTIZE, KERNELS
from condense.quantize.weight_only.linear import SharedInputLinears
from condense.tasks.gpt import GPT, GPTConfig, generate

# (bits, kernel, group) of the stackable kernels that run here
STACKABLE = [(b, n, -1 if n == "torch-int8" else 32) for (b, n), k in sorted(KERNELS.items())
             if k.stackable and k.unavailable() is None]
needs_stackable = pytest.mark.skipif(not STACKABLE, reason="no stackable low-bit kernel runs on this machine")


def _layers(bits: int, kernel: str, group: int, outs=(32, 48, 16), *, bias=True, seed=0) -> list[WeightOnlyLinear]:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for out in outs:
        w, b = torch.randn(out, 64, generator=g) * 0.1, torch.randn(out, generator=g)
        m = WeightOnlyLinear.from_quantized(rtn_quantize(w, bits=bits, group_size=group), b if bias else None)
        assert m.set_kernel(kernel) is None
        layers.append(m)
    return layers


def _one_by_one(layers, x):
    return [m(x) for m in layers]


@needs_stackable
@pytest.mark.parametrize("bits,kernel,group", STACKABLE)
@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (2, 3, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_stacked_outputs_are_the_layers_outputs_bit_for_bit(bits, kernel, group, shape, bias):
    layers, group_run = _layers(bits, kernel, group, bias=bias), SharedInputLinears()
    x = torch.randn(*shape)
    with torch.inference_mode():
        got = group_run(layers, x)
        assert group_run._run is not None  # the stacked path ran, not the fallback
        want = _one_by_one(layers, x)
    assert [tuple(y.shape) for y in got] == [(*shape[:-1], o) for o in (32, 48, 16)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@needs_stackable
@pytest.mark.parametrize("bits,kernel,group", STACKABLE)
def test_run_linear_is_run_plus_bias_exactly(bits, kernel, group):
    (m,) = _layers(bits, kernel, group, outs=(48,))
    k, x = KERNELS[(bits, kernel)], torch.randn(3, 64)
    assert torch.equal(k.run_linear(m.kernel_state(), x, m.bias.detach()), k.run(m.kernel_state(), x) + m.bias)


@needs_stackable
def test_the_stacked_state_follows_loads_and_kernel_changes():
    bits, kernel, group = STACKABLE[0]
    layers, run = _layers(bits, kernel, group), SharedInputLinears()
    x = torch.randn(2, 64)
    with torch.no_grad():
        run(layers, x)
        other = _layers(bits, kernel, group, seed=1)[1]
        codec = condense.core.artifact.CODECS.find(layers[1])
        codec.load(layers[1], codec.export(other))  # written in place, as loading an artifact does
        assert all(torch.equal(a, b) for a, b in zip(run(layers, x), _one_by_one(layers, x)))
        assert torch.equal(run(layers, x)[1], other(x))
        with torch.inference_mode():  # tensors made in inference mode carry no version counter: still followed
            inf = _layers(bits, kernel, group, seed=2)
            run(inf, x)
            codec.load(inf[0], codec.export(layers[0]))
            assert torch.equal(run(inf, x)[0], layers[0](x))
        layers[2].set_kernel(DEQUANTIZE)  # mixed kernels: one by one
        got = run(layers, x)
        assert run._run is None and all(torch.equal(a, b) for a, b in zip(got, _one_by_one(layers, x)))


@needs_stackable
def test_hooks_act_order_and_copies_fall_back_or_rebuild():
    bits, kernel, group = STACKABLE[0]
    layers, run = _layers(bits, kernel, group), SharedInputLinears()
    x, seen = torch.randn(2, 64), []
    handle = layers[1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        got = run(layers, x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], got[1])  # a hooked layer runs as itself
    twin = copy.deepcopy(run)
    assert twin._run is None and twin._key == ()
    act = WeightOnlyLinear(64, 16, bits=bits, group_size=group, act_order=True)
    act.set_kernel(kernel)
    with torch.no_grad():
        run([layers[0], act], x)
    assert run._run is None


@needs_stackable
def test_quantized_gpt_decodes_the_same_tokens_stacked_and_one_by_one(tmp_path, monkeypatch):
    bits, kernel, group = STACKABLE[0]
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64)
    model = GPT(cfg).eval()
    q = quantize_(model, WeightOnlyConfig(bits=bits, group_size=group, kernel=kernel))
    assert {m.kernel for m in q.modules() if isinstance(m, WeightOnlyLinear)} == {kernel}
    prompt = torch.randint(0, 256, (2, 5))
    stacked = generate(q, prompt, 40)  # past block_size: the cache restarts too
    assert all(b.attn.qkv._run is not None for b in q.blocks)
    with torch.no_grad():
        logits = q(prompt)
    loaded = condense.load(condense.save(q, tmp_path / "a"), model=GPT(cfg))
    assert torch.equal(generate(loaded, prompt, 40), stacked)
    monkeypatch.setattr(SharedInputLinears, "_stack", staticmethod(lambda layers: None))
    fresh = copy.deepcopy(q)
    assert torch.equal(generate(fresh, prompt, 40), stacked)
    with torch.no_grad():
        assert torch.equal(fresh(prompt), logits)


def test_plain_linears_run_one_by_one():
    lins = [nn.Linear(8, 4), nn.Linear(8, 2)]
    x = torch.randn(3, 8)
    with torch.no_grad():
        got = SharedInputLinears()(lins, x)
        assert torch.equal(got[0], lins[0](x)) and torch.equal(got[1], lins[1](x))
