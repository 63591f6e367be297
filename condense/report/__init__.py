"""Reports: report.json (every measured figure) and a self-contained report.html with charts."""
from condense.report.build import build_report, step_verdicts
from condense.report.html import render_html
from condense.report.pareto import dominates, pareto_front, pareto_svg

__all__ = ["build_report", "render_html", "step_verdicts", "pareto_front", "pareto_svg", "dominates"]
