"""Accuracy-budgeted search (optuna, multi-objective): `search(task, SearchConfig(budget="1%"))`.

Named `searching` because `condense.search` is the public function. optuna is imported only when a search runs.
"""
from condense.searching.api import BudgetNotMet, SearchResult, pareto_front, search
from condense.searching.config import SearchConfig, parse_budget
from condense.searching.knobs import KNOBS, Knob

__all__ = ["search", "SearchConfig", "SearchResult", "BudgetNotMet", "pareto_front", "parse_budget", "KNOBS", "Knob"]
