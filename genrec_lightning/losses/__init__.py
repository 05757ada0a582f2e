"""Token losses of the generative recommender (docs/design.md §6).

Every loss shares one masked per-token cross-entropy; a weighting rule only supplies a weight per
target token. `TokenLoss` is the extension point: the recommender calls `prepare` once with the
data the rule may need (ID table, item embeddings, training frequencies), then `forward` on every
training batch.

Paper objectives: `FrontGreater`, `Frequency`, `MultiTargetCurriculum` (and `LinearSchedule` for
the hand-scheduled ablations). Baselines: `Position`, `IGD`, `Rank`, `CFT`.
"""

from genrec_lightning.losses.base import CrossEntropyTokenLoss, LossContext, TokenLoss, token_cross_entropy
from genrec_lightning.losses.baselines import CFT, IGD, Position, Rank
from genrec_lightning.losses.multi_target import LinearSchedule, MultiTargetCurriculum
from genrec_lightning.losses.weighting import Frequency, FrontGreater

__all__ = [
    "CFT",
    "IGD",
    "CrossEntropyTokenLoss",
    "LinearSchedule",
    "Position",
    "Rank",
    "FrontGreater",
    "Frequency",
    "LossContext",
    "MultiTargetCurriculum",
    "TokenLoss",
    "token_cross_entropy",
]
