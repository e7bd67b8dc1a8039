"""Training: config, split plan, the loop, checkpoints, calibration, artifacts, distillation, distributed runs, adaptation, recipes.

Pickled full models (``model_full.pth``) refer to ``emovox.training.FullModel`` and
``emovox.training.FullStreamingModel``; those two names stay importable from here.
"""

from emovox.training.full_model import FullModel, FullStreamingModel

__all__ = ["FullModel", "FullStreamingModel"]
