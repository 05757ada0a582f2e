"""Token losses of the generative recommender (DESIGN.md §5).

Every loss shares one masked per-token cross-entropy; a weighting rule only supplies a weight per
target token. `TokenLoss` is the extension point: the recommender calls `prepare` once with the
data the rule may need (ID table, item embeddings, training frequencies), then `forward` on every
training batch.
"""

from genrec_lightning.losses.base import CrossEntropyTokenLoss, LossContext, TokenLoss, token_cross_entropy
from genrec_lightning.losses.multi_target import MultiTargetCurriculum
from genrec_lightning.losses.weighting import Frequency, FrontGreater

__all__ = [
    "CrossEntropyTokenLoss",
    "FrontGreater",
    "Frequency",
    "LossContext",
    "MultiTargetCurriculum",
    "TokenLoss",
    "token_cross_entropy",
]
