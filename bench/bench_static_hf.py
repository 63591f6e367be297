"""Static int8 routes on a Hugging Face BertModel (hidden 128, 2 layers, seq 64, batch 8, 2 threads): fp32, torch
dynamic int8, ORT fp32/dynamic/static (QDQ, QOperator), PT2E (torchao X86InductorQuantizer) eager and, with
COMPILE=1, after torch.compile. p50 of 15 interleaved rounds. Figures: condense/quantize/static_ort.py docstring.
Run: /work/main/.venv/bin/python bench/bench_static_hf.py
"""
import io, os, sys, time, statistics, warnings, tempfile
warnings.simplefilter("ignore")
import torch, numpy as np
torch.set_num_threads(2); torch.manual_seed(0)
from transformers import BertConfig, BertModel
cfg = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, vocab_size=1000)
m = BertModel(cfg).eval()
B, T = 8, 64
def batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (B, T), generator=g); mask = torch.ones(B, T, dtype=torch.long); mask[:, T-8:] = 0
    return {"input_ids": ids, "attention_mask": mask}
cal = [batch(i) for i in range(8)]; x = batch(100)
with torch.no_grad(): ref = m(**x).last_hidden_state
fns = {}
fns["fp32"] = lambda: m(**x)
dq = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
fns["dyn_int8"] = lambda: dq(**x)
# ORT
import onnxruntime as ort
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantType, QuantFormat, quantize_dynamic
class W(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, input_ids, attention_mask): return s.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
buf = io.BytesIO()
torch.onnx.export(W(m), (x["input_ids"], x["attention_mask"]), buf, input_names=["input_ids","attention_mask"], output_names=["out"],
  dynamic_axes={"input_ids":{0:"b",1:"t"},"attention_mask":{0:"b",1:"t"},"out":{0:"b",1:"t"}}, opset_version=17, dynamo=False)
d = tempfile.mkdtemp(); src = d+"/f.onnx"; open(src,"wb").write(buf.getvalue())
from onnxruntime.quantization.shape_inference import quant_pre_process
pre = d+"/pre.onnx"; quant_pre_process(src, pre, skip_symbolic_shape=True)
class R(CalibrationDataReader):
    def __init__(s): s.it = iter([{k: v.numpy() for k, v in b.items()} for b in cal])
    def get_next(s): return next(s.it, None)
def sess(p):
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads=1
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
feeds = {k: v.numpy() for k, v in x.items()}
s32 = sess(src); fns["ort_fp32"] = lambda: s32.run(None, feeds)
for fmt in ["QDQ", "QOperator"]:
    for pc in [True]:
        dst = d+f"/s_{fmt}.onnx"
        quantize_static(pre, dst, R(), quant_format=getattr(QuantFormat, fmt), per_channel=pc, activation_type=QuantType.QUInt8 if fmt=="QOperator" else QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul","Gemm"], extra_options={"ActivationSymmetric": False})
        s = sess(dst); fns[f"ort_static_{fmt}"] = (lambda s=s: s.run(None, feeds))
        print(fmt, "maxdiff", float((torch.from_numpy(s.run(None, feeds)[0]) - ref).abs().max()))
quantize_dynamic(src, d+"/dyn.onnx", weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
sd = sess(d+"/dyn.onnx"); fns["ort_dyn"] = lambda: sd.run(None, feeds)
# PT2E
try:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    q = xiq.X86InductorQuantizer(); q.set_global(xiq.get_default_x86_inductor_quantization_config())
    ep = torch.export.export(m, (), kwargs=x, strict=False).module()
    pm = prepare_pt2e(ep, q)
    with torch.no_grad():
        for b in cal: pm(**b)
    cm = convert_pt2e(pm)
    with torch.no_grad(): print("pt2e eager maxdiff", float((cm(**x).last_hidden_state - ref).abs().max()))
    fns["pt2e_eager"] = lambda: cm(**x)
    if os.environ.get("COMPILE"):
        t0 = time.time()
        from torch._inductor import config as ic; ic.freezing = True
        cc = torch.compile(cm)
        with torch.no_grad(): cc(**x); print("compile s", time.time()-t0)
        with torch.no_grad(): print("pt2e inductor maxdiff", float((cc(**x).last_hidden_state - ref).abs().max()))
        fns["pt2e_inductor"] = lambda: cc(**x)
except Exception as e:
    print("pt2e fail", type(e).__name__, str(e)[:300])
times = {k: [] for k in fns}
with torch.no_grad():
    for f in fns.values(): f(); f()
    for r in range(15):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
for k, v in times.items(): print(f"{k:22s} p50 {statistics.median(v)*1e3:7.2f} ms  x{statistics.median(times['fp32'])/statistics.median(v):.2f} vs fp32")
