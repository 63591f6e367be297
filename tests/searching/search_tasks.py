"""Task factories the search tests run (also from fresh processes, as `tests.searching.search_tasks:NAME`)."""
from __future__ import annotations

import torch

from condense.core.task import Task
from condense.testing import TinyMLP


def fidelity_task(seed: int = 0) -> Task:
    """TinyMLP whose metric, 1 - relative MSE to its own float outputs, drops a little under any quantization."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyMLP().eval()
    x = torch.randn(64, 8, generator=g)
    with torch.no_grad():
        ref = model(x)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"fidelity": float(1 - (m(x) - ref).pow(2).mean() / ref.pow(2).mean())}

    return Task("fidelity", model, evaluate=evaluate, primary_metric="fidelity", inputs=x[:1],
                calibration_data=lambda: iter([x[:32], x[32:]]), batch_sizes=(8,))


def two_source_task(seed: int = 0) -> Task:
    """A task whose primary metric never drops (1.0 for any model) while its second source, the fidelity above,
    drops under any quantization: only the second source can reject a trial."""
    fid = fidelity_task(seed)
    return Task("two-source", fid.model, evaluate=lambda m: {"agree": 1.0, "fidelity_offsource": fid.evaluate(m)[
                "fidelity"]}, primary_metric="agree", offsource_metric="fidelity_offsource", inputs=fid.inputs,
                calibration_data=fid.calibration_data, batch_sizes=(8,))
