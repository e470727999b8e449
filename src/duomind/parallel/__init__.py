"""torch.distributed helpers: expert parallelism (all-to-all dispatch and combine) for MoE / MoGE layers."""

from duomind.parallel.expert import ExpertParallelError, ExpertParallelMoE

__all__ = ["ExpertParallelMoE", "ExpertParallelError"]
