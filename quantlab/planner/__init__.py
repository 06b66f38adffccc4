"""The planner: pure arithmetic over frozen specs (standard library only: no torch, no I/O, no printing).

``plan(cfg) -> Plan`` gives memory per component and the allocated / reserved / process totals;
``fit(cfg, gpu) -> Fit`` the verdict against a GPU. See :mod:`quantlab.planner.memory` for the assumptions.
"""

from quantlab.planner.fit import Fit, fit, min_gpus
from quantlab.planner.memory import Plan, plan
from quantlab.planner.params import ParamCounts, count_params

__all__ = ["Fit", "Plan", "ParamCounts", "count_params", "fit", "min_gpus", "plan"]
