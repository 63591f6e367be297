import json
import xml.etree.ElementTree as ET

from condense.measurement.api import Measurement
from condense.report import build_report, render_html, step_verdicts
from condense.report.pareto import pareto_svg
from condense.report.svg import bar_chart


def _m(label, p50_1, p50_32, size, mrr):
    return Measurement(label=label, task="t", primary_metric="mrr", higher_is_better=True, params_total=10,
                       params_nonzero=10, size_bytes=size, macs_per_sample=100,
                       latency={"1": {"p50_s": p50_1, "p95_s": p50_1 * 1.2}, "32": {"p50_s": p50_32,
                                                                                   "p95_s": p50_32 * 1.1}},
                       throughput={"1": 1 / p50_1, "32": 32 / p50_32}, quality={"mrr": mrr},
                       machine={"torch_threads": 2, "cpu": "x", "device": "cpu", "versions": {"torch": "2"}})


def test_verdicts_compute_ratios_and_flag_smaller_not_faster():
    v = step_verdicts(_m("a", 0.010, 0.100, 1000, 0.9), _m("b", 0.005, 0.025, 250, 0.89))
    assert v["speedup"] == {"1": 2.0, "32": 4.0} and v["size_ratio"] == 0.25
    assert abs(v["quality_delta"]["mrr"] + 0.01) < 1e-12 and v["warnings"] == []
    v = step_verdicts(_m("a", 0.010, 0.100, 1000, 0.9), _m("sparse", 0.0101, 0.099, 300, 0.9))
    assert len(v["warnings"]) == 1 and "smaller (0.30x the size) but not faster" in v["warnings"][0]
    v = step_verdicts(_m("a", 0.010, 0.100, 1000, 0.9), _m("slow", 0.020, 0.100, 1000, 0.9))
    assert v["warnings"] == ["slow: slower than a at batch 1 (0.50x)"]


def test_verdicts_count_decode_tokens_per_s_as_speed_for_generative_models():
    fp32, q = _m("fp32", 0.010, 0.100, 1000, 0.9), _m("4-bit", 0.0139, 0.100, 160, 0.9)  # forward 0.72x at batch 1
    fp32.tokens_per_s, q.tokens_per_s = {"1": 254.2}, {"1": 789.6}  # but decodes 3.11x as fast
    v = step_verdicts(fp32, q)
    assert abs(v["decode_speedup"]["1"] - 789.6 / 254.2) < 1e-12
    assert v["warnings"] == ["4-bit: slower than fp32 at batch 1 (0.72x; decode tokens/s 3.11x)"]  # not "not faster"
    q.tokens_per_s = {"1": 200.0}
    v = step_verdicts(fp32, q)
    assert "smaller (0.16x the size) but not faster" in v["warnings"][0]
    assert v["warnings"][-1] == "4-bit: decodes slower than fp32 at batch 1 (0.79x tokens/s)"


def test_report_json_and_html_are_complete():
    steps = [{"label": "fp32", "transforms": [], "measurement": _m("fp32", 0.01, 0.1, 1000, 0.9)},
             {"label": "int8", "transforms": [{"type": "X"}], "measurement": _m("int8", 0.005, 0.03, 300, 0.89)}]
    rep = build_report("run1", "t", steps)
    assert json.loads(json.dumps(rep))["steps"][1]["vs_baseline"]["speedup"]["32"] == 0.1 / 0.03
    html = render_html(rep)
    assert html.count("<svg") == 3 and "3.33x" in html and "int8" in html
    assert "<script" not in html and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_svg_charts_are_well_formed_with_one_mark_per_value():
    svg = bar_chart("lat", ["b1", "b32"], {"a": [1.0, 2.0], "b": [0.5, None]})
    root = ET.fromstring(svg)
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    assert len(bars) == 3
    svg = pareto_svg([{"x": 1, "y": 2, "label": "a"}, {"x": 3, "y": 1, "label": "b"}], x="x", y="y", title="p")
    pts = [e for e in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}circle")]
    assert len(pts) == 2 and float(pts[0].get("cx")) < float(pts[1].get("cx"))
