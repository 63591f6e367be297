"""Every registered transform on a CUDA model: it applies there (or refuses with an error that names the fix), its
outputs match the same transform applied on the CPU, and its artifact saved from the GPU loads on the CPU with the
same outputs. Skipped on machines without a CUDA GPU (CI has none; run on a GPU machine:
`python -m pytest -q tests/gpu`).
"""
import importlib.util

import pytest
import torch

import condense
from condense.core.transforms import apply_
from condense.errors import CondenseError
from tests.core.test_transform_contract import EXAMPLES, NEEDS, _cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Transforms that run on CPU kernels only and must refuse a CUDA model with an error naming the fix (seen on an H200).
CPU_ONLY = {("quantize", "bf16"), ("quantize", "dynamic"), ("quantize", "int8"), ("quantize", "mixed"),
            ("quantize", "ort"), ("quantize", "qat"), ("quantize", "static"), ("export", "onnx")}
UNCHECKED = {("export", "tflite"), ("export", "tflite-int8")}  # litert_torch was not installed on the GPU machine

# Transforms that train a few steps: GPU and CPU arithmetic differ, so their results drift apart a little.
TRAINS = {("quantize", "qat"), ("prune", "gradual"), ("fine-tune", "task-loss"), ("distill", "kd"),
          ("early-exit", "confidence")}


def _apply(key, device):
    make_task, make_cfg, _ = EXAMPLES[key]
    task = make_task(device)
    model = task.build_model()
    if key == ("prune", "bake-masks"):
        model = apply_(model, _cfg("condense.prune.unstructured.UnstructuredConfig", sparsity=0.5,
                                   permanent=False), task=task)
    return task, apply_(model, make_cfg(), task=task)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("key", sorted(EXAMPLES), ids=lambda k: f"{k[0]}-{k[1]}")
def test_transform_on_cuda_matches_cpu_and_reloads_on_cpu(key, tmp_path):
    if key in NEEDS and importlib.util.find_spec(NEEDS[key]) is None:
        pytest.skip(f"{NEEDS[key]} is not installed")
    try:
        task, out = _apply(key, "cuda")
    except CondenseError as e:  # a CPU-only technique must say so and name the fix
        assert key in CPU_ONLY | UNCHECKED and "cpu" in str(e).lower(), (key, e)
        print(f"{key}: refused on cuda: {e}")
        return
    assert key not in CPU_ONLY, f"{key} ran on CUDA: take it out of CPU_ONLY"
    cpu_task, ref = _apply(key, "cpu")
    with torch.no_grad():
        got = _first(out(task.inputs)).float().cpu()
        want = _first(ref(cpu_task.inputs)).float()
    scale = want.abs().max().item() + 1e-6
    tol = 5e-2 if key in TRAINS else 2e-3
    assert (got - want).abs().max().item() <= tol * scale, (key, (got - want).abs().max().item(), scale)
    back = condense.load(condense.save(out, tmp_path / "a"), model=EXAMPLES[key][0]("cpu").build_model())
    with torch.no_grad():
        again = _first(back(cpu_task.inputs)).float()
    assert (again - got).abs().max().item() <= 2e-3 * scale


def _llama(device):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(cfg).eval().to(device)


def test_structured_pruning_of_a_hugging_face_llama_on_cuda_matches_the_cpu_cut():
    from condense.prune import StructuredConfig, prune_

    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    cfg = StructuredConfig(ratio=0.25)
    gpu = prune_(_llama("cuda"), cfg, calibration=[{"input_ids": ids.cuda()}])
    cpu = prune_(_llama("cpu"), cfg, calibration=[{"input_ids": ids}])
    assert [p.shape for p in gpu.parameters()] == [p.shape for p in cpu.parameters()]
    with torch.no_grad():
        got, want = gpu(input_ids=ids.cuda()).logits.cpu(), cpu(input_ids=ids).logits
    assert (got - want).abs().max().item() <= 2e-3 * want.abs().max().item()
    out = gpu.generate(ids.cuda(), attention_mask=torch.ones_like(ids).cuda(), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 16)


def test_speculative_decoding_on_cuda_equals_the_targets_greedy_output():
    from condense.speculative import speculative_generate

    target = _llama("cuda")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    draft = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=128)).eval().cuda()
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2)).cuda()
    out, stats = speculative_generate(target, draft, ids, 20, k=4)
    want = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(out, want) and stats.new_tokens == 20


def test_weight_only_auto_kernel_on_cuda_keeps_the_gpu_path_and_says_why():
    from condense.core.lineage import lineage
    from condense.quantize.weight_only import WeightOnlyConfig

    model = _llama("cuda")
    with pytest.warns(UserWarning, match="CPU kernel"):
        q = condense.quantize_(model, WeightOnlyConfig(bits=4, group_size=32))
    entry = lineage(q)["transforms"][-1]["details"]
    assert set(entry["kernel"].values()) == {"dequantize"}
    ids = torch.randint(0, 256, (1, 8)).cuda()
    with torch.no_grad():
        assert torch.isfinite(q(input_ids=ids).logits).all()
