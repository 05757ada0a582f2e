"""Analysis of runs and semantic IDs, library code only: readers (`runs`), the papers' figures
(`figures`), the figure writer (`report`), paired comparison of runs (`compare`, `significance`).

The commands over them (`genrec report`, `genrec compare`) live in `genrec_lightning.cli`.
"""

from genrec_lightning.analysis.figures import *  # noqa: F403
from genrec_lightning.analysis.figures import __all__ as _figures
from genrec_lightning.analysis.runs import *  # noqa: F403
from genrec_lightning.analysis.runs import __all__ as _runs

__all__ = [*_figures, *_runs]
