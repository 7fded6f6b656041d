"""``ResumableOptunaSweeper``: hydra-optuna-sweeper's ``OptunaSweeper`` whose jobs are numbered by trial and which
continues a killed search with ``resume=true`` (``autotimm.hparams_search``). Defined only where the ``sweep`` extra
is installed, so Hydra's plugin scan stays quiet without it."""

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - the sweep extra is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        """``OptunaSweeper``'s arguments; its implementation is ``autotimm.hparams_search.ResumableOptunaImpl``."""

        def __init__(self, sampler: Any, direction: Any, storage: Any | None, study_name: str | None,
                     n_trials: int, n_jobs: int, max_failure_rate: float, search_space: Any = None,
                     custom_search_space: str | None = None, params: Any = None) -> None:
            from autotimm.hparams_search import ResumableOptunaImpl

            self.sweeper = ResumableOptunaImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                               max_failure_rate, search_space, custom_search_space, params)
