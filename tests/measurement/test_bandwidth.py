import torch
from torch import nn

from condense.core.task import Task
from condense.measurement.api import MeasureConfig, measure
from condense.measurement.bandwidth import memory_bandwidth, roofline_fraction, weight_bytes
from condense.measurement.table import comparison_table


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("packed", torch.zeros(6, dtype=torch.uint8))

    def forward(self, x):
        return self.head(self.emb(x))


def test_weight_bytes_counts_tied_weights_once_and_buffers_at_their_size():
    assert weight_bytes(Tied()) == 10 * 4 * 4 + 6


def test_roofline_fraction_is_tokens_per_s_over_the_roof():
    # roof = 8 * 2e9 / 1e9 = 16 tokens/s; 4 tokens/s is a quarter of it
    assert roofline_fraction(4.0, 8, 10**9, 2e9) == 0.25


def test_bandwidth_probe_gives_a_plausible_rate():
    bw = memory_bandwidth(mbytes=16, repeats=3)
    assert 1e8 < bw < 1e13  # 0.1 GB/s .. 10 TB/s
    assert memory_bandwidth(mbytes=16, repeats=3) == bw  # cached for the process


def test_measure_reports_time_to_first_token_and_the_share_of_the_roof():
    model = Tied().eval()
    calls = []

    def generate(m, bs, tokens):
        calls.append(tokens)
        x = torch.zeros(bs, 1, dtype=torch.long)
        for _ in range(tokens):
            x = torch.cat([x, m(x)[:, -1:].argmax(-1)], 1)
        return bs * tokens

    task = Task("toy-lm", model, evaluate=lambda m: {"loss": 0.0}, primary_metric="loss", higher_is_better=False,
                inputs=torch.zeros(1, 3, dtype=torch.long), generate=generate)
    m = measure(model, task, MeasureConfig(batch_sizes=(1,), repeats=1, warmup=0, min_time_s=0, quality=False,
                                           size=False, macs=False, memory=False, generate_tokens=4))
    d = m.decode["1"]
    assert 1 in calls and d["ttft_s"] > 0
    assert d["weight_bytes"] == weight_bytes(model)
    assert abs(d["roofline"] - m.tokens_per_s["1"] * d["weight_bytes"] / d["bandwidth_bps"]) < 1e-9
    rows = {r: None for r in comparison_table([m]).columns[0]._cells}
    assert "time to first token @ batch 1" in rows and "decode vs memory roof @ batch 1" in rows


def test_the_probe_outgrows_a_last_level_cache_larger_than_its_default(monkeypatch):
    from condense.measurement import bandwidth

    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: 480 * 2**20)  # a 480 MiB L3
    assert bandwidth.probe_mbytes() == 1920
    assert bandwidth.fits_in_cache(102 * 2**20) and not bandwidth.fits_in_cache(481 * 2**20)
    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: 32 * 2**20)  # a 32 MiB L3: the default holds
    assert bandwidth.probe_mbytes() == 256
    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: None)  # unknown: default, never "fits"
    assert bandwidth.probe_mbytes() == 256 and not bandwidth.fits_in_cache(1)


def test_last_level_cache_is_read_from_sysfs_sizes(tmp_path, monkeypatch):
    from condense.measurement import bandwidth

    for i, size in enumerate(["48K", "2048K", "491520K"]):
        d = tmp_path / "cpu0" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        (d / "size").write_text(size + "\n")
    real = bandwidth.Path
    monkeypatch.setattr(bandwidth, "Path", lambda p: real(str(p).replace("/sys/devices/system/cpu", str(tmp_path))))
    assert bandwidth.last_level_cache_bytes() == 491520 * 1024
