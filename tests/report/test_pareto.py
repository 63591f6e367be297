import random
import xml.etree.ElementTree as ET

import pytest

from condense.report.pareto import pareto_front, pareto_svg

SVG = "{http://www.w3.org/2000/svg}"


def _brute_front(points, objectives):
    """Reference: a point is on the front unless some other point is >= on all objectives and > on one."""
    def as_max(p):
        return [p[k] if d == "max" else -p[k] for k, d in objectives.items()]
    out = []
    for i, p in enumerate(points):
        a = as_max(p)
        dominated = False
        for j, q in enumerate(points):
            b = as_max(q)
            if j != i and all(y >= x for x, y in zip(a, b)) and any(y > x for x, y in zip(a, b)):
                dominated = True
        if not dominated:
            out.append(i)
    return out


def test_pareto_front_matches_brute_force_on_random_points():
    rng = random.Random(0)
    objectives = {"ms": "min", "mb": "min", "acc": "max"}
    for _ in range(30):
        pts = [{"ms": rng.randint(1, 6), "mb": rng.randint(1, 6), "acc": rng.randint(1, 6)} for _ in range(25)]
        assert pareto_front(pts, objectives) == _brute_front(pts, objectives)


def test_pareto_front_small_cases_and_errors():
    pts = [{"ms": 10, "acc": 0.9}, {"ms": 5, "acc": 0.8}, {"ms": 12, "acc": 0.85}, {"ms": 5, "acc": 0.8},
           {"ms": 1, "acc": float("nan")}, {"acc": 1.0}]
    assert pareto_front(pts, {"ms": "min", "acc": "max"}) == [0, 1, 3]
    assert pareto_front(pts, {"ms": "max", "acc": "min"}) == [1, 2, 3]
    assert pareto_front(pts, {"ms": "max"}) == [2]
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_front(pts, {"ms": "lower"})
    with pytest.raises(ValueError, match="at least one"):
        pareto_front(pts, {})


def test_pareto_svg_marks_every_point_and_highlights_the_front():
    pts = [{"ms": 10.0, "acc": 0.9, "mb": 80, "label": "fp32"}, {"ms": 4.0, "acc": 0.88, "mb": 20, "label": "int8"},
           {"ms": 6.0, "acc": 0.7, "mb": 40, "label": "bad"}, {"ms": 2.0, "acc": 0.5, "mb": 10, "label": "tiny"}]
    root = ET.fromstring(pareto_svg(pts, x="ms", y="acc", size="mb", title="t"))
    circles = list(root.iter(SVG + "circle"))
    assert len(circles) == 4
    front = [c for c in circles if "front" in c.get("class").split()]
    assert sorted(c.find(SVG + "title").text.split(":")[0] for c in front) == ["fp32", "int8", "tiny"]
    radii = {c.find(SVG + "title").text.split(":")[0]: float(c.get("r")) for c in circles}
    assert radii["fp32"] > radii["bad"] > radii["int8"] > radii["tiny"]
    line = root.find(SVG + "polyline")
    assert line.get("class") == "frontier" and len(line.get("points").split()) == 3
    # lower latency is drawn further left; higher quality further up
    cx = {c.find(SVG + "title").text.split(":")[0]: float(c.get("cx")) for c in circles}
    cy = {c.find(SVG + "title").text.split(":")[0]: float(c.get("cy")) for c in circles}
    assert cx["tiny"] < cx["int8"] < cx["bad"] < cx["fp32"] and cy["fp32"] < cy["tiny"]
