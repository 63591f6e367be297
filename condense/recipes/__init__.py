"""Recipes: YAML lists of steps (prune, quantize, distill, factorize, fine-tune, early-exit, export) run in order."""
from condense.recipes.recipe import Recipe, RecipeStep, apply_overrides, load_recipe, parse_overrides, parse_recipe
from condense.recipes.run import run_recipe
from condense.recipes.steps import STEP_KINDS, StepKind, register_step

__all__ = ["Recipe", "RecipeStep", "load_recipe", "parse_recipe", "parse_overrides", "apply_overrides",
           "run_recipe", "STEP_KINDS", "StepKind", "register_step"]
