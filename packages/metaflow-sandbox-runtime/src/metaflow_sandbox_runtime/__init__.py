"""The in-sandbox bootstrap and the launcher-side plan that drives it."""

from .plan import PLAN_VERSION, Plan, bootstrap_path, bootstrap_source

__version__ = "0.1.0"

__all__ = ["PLAN_VERSION", "Plan", "bootstrap_path", "bootstrap_source"]
