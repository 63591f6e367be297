"""report.html opened in real headless Chromium (Debian's package): the page renders, with its plots and points."""
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from condense.measurement.api import Measurement
from condense.report import build_report, render_html

SVG = "{http://www.w3.org/2000/svg}"


def _install_chromium() -> str | None:
    """Chromium's binary; installed with apt-get (update first) when missing, as on a bare CI machine."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    apt = shutil.which("apt-get")
    if apt is None:
        print("cannot install chromium: no apt-get on this machine")
        return None
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        print("cannot install chromium: apt-get needs root and there is no sudo")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["update"], ["install", "-y", "--no-install-recommends", "chromium"]):
        r = subprocess.run(sudo + [apt, *cmd], env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            print(f"apt-get {' '.join(cmd)} failed: {r.stderr[-500:]}")
            return None
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium():
    path = _install_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and apt-get could not install it (reason printed above)")
    return path


def _m(label, ms, size, acc, tok_s=None):
    return Measurement(label=label, task="t", primary_metric="acc", higher_is_better=True, params_total=10,
                       params_nonzero=10, size_bytes=size, macs_per_sample=100,
                       latency={"1": {"p50_s": ms / 1e3, "p95_s": ms / 1e3}}, throughput={"1": 1e3 / ms},
                       quality={"acc": acc}, machine={"torch_threads": 2, "cpu": "x", "device": "cpu",
                                                      "versions": {"torch": "2"}})


def _dom(chromium, html_path, tmp_path) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html_path.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_report_renders_in_chromium_with_pareto_and_sensitivity(chromium, tmp_path):
    steps = [{"label": "fp32", "measurement": _m("fp32", 10.0, 4_000_000, 0.95)},
             {"label": "pruned", "measurement": _m("pruned", 6.0, 2_000_000, 0.90)},
             {"label": "sparse", "measurement": _m("sparse", 9.9, 1_000_000, 0.80)},
             {"label": "int8", "measurement": _m("int8", 3.0, 1_000_000, 0.93),
              "details": [{"sensitivity": [{"name": "fc1", "metric": 0.9, "drop": 0.05},
                                           {"name": "fc2", "metric": 0.94, "drop": 0.01}]}]}]
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report("chromium", "t", steps)))
    dom = _dom(chromium, page, tmp_path)
    assert "<title>condense report: chromium</title>" in dom and "What each step bought and cost" in dom
    svgs = [ET.fromstring(s[:s.index("</svg>") + 6]) for s in ("<svg" + p for p in dom.split("<svg")[1:])]
    assert len(svgs) == 4  # latency bars, size bars, sensitivity bars, Pareto scatter
    pareto = next(s for s in svgs if "pareto" in s.get("class", ""))
    points = [c for c in pareto.iter(SVG + "circle") if "point" in c.get("class", "").split()]
    assert len(points) == 4
    front = sorted(c.find(SVG + "title").text.split(":")[0] for c in points if "front" in c.get("class"))
    assert front == ["fp32", "int8"]  # pruned and sparse are beaten on both latency and accuracy by int8
    assert pareto.find(SVG + "polyline").get("class") == "frontier"
    sens = next(s for s in svgs if "sensitivity" in (s.get("aria-label") or ""))
    assert len([r for r in sens.iter(SVG + "rect") if r.get("class") == "bar"]) == 2
    assert "smaller (0.50x the size) but not faster" in dom  # sparse: a plain warning


def test_report_screenshot_has_the_plots_drawn(chromium, tmp_path):
    steps = [{"label": "a", "measurement": _m("a", 10.0, 4_000_000, 0.95)},
             {"label": "b", "measurement": _m("b", 4.0, 1_000_000, 0.94)}]
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report("shot", "t", steps)))
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1100,3000",
           page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    # the palette's first two series colours (bars and points) are painted over a substantial area
    painted = {c: n for n, c in colours}
    assert painted.get((0x4E, 0x79, 0xA7), 0) > 500 and painted.get((0xF2, 0x8E, 0x2B), 0) > 500
