"""Planning: what a run will do, decided once, before any weights load (:func:`plan_run` -> :class:`RunPlan`), and
the generation budget it sets (:mod:`~medqa_bench.planning.budget`). See :mod:`medqa_bench.planning.plan`."""

from .plan import DEFAULT_ADAPTER, RunPlan, plan_run, run_adapters, shipped_adapter  # noqa: F401
