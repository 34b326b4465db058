"""Table 1/2, Figures 6-8 and the adaptive attackers, as layers that import only downward:

config → plan → store → pipeline/workbench → stages (registry) → executors (local, Ray) → summary →
runner (orchestration) → report.
"""

from .._lazy import lazy

_EXPORTS = {"EvaluationConfig": ".config", "load_samples": ".config", "evaluate": ".runner",
            "evaluate_model": ".runner", "EvaluationResult": ".runner", "ModelEvaluation": ".runner",
            "write_report": ".report", "ShardStore": ".store", "LocalExecutor": ".executors",
            "RayExecutor": ".ray_executor", "STAGES": ".stages"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, __all__)
