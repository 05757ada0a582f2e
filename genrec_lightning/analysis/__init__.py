"""Analysis of runs and semantic IDs: readers (`runs`), the papers' figures (`figures`), `genrec report`."""

from genrec_lightning.analysis.figures import *  # noqa: F403
from genrec_lightning.analysis.figures import __all__ as _figures
from genrec_lightning.analysis.runs import *  # noqa: F403
from genrec_lightning.analysis.runs import __all__ as _runs

__all__ = [*_figures, *_runs]
