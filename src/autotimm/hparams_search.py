"""The Optuna sweeper (``conf/hparams_search``), resumable.

hydra-optuna-sweeper 1.3.0 numbers its jobs from 0 on every run and always runs ``n_trials`` more trials, so a killed
search re-run into its folder would put new trials in the folders of old ones, and the trial that was running when
the allocation ended is left ``RUNNING`` in the study for ever. ``ResumableOptunaSweeper`` is that sweeper with two
changes, nothing else re-written: a job's folder is its trial's number (``<sweep dir>/<trial.number>``, so trials and
folders stay paired across runs of one study), and with ``resume=true`` (and a ``storage``, where the study lives):

- trials the study holds as finished (complete, failed, pruned) count against ``n_trials`` and are not run again;
- a trial left running is put back in the queue with its own parameters (Optuna's ``WAITING`` state, which
  ``study.ask()`` hands out first), so the job lands in its old folder, where ``resume=true`` continues it from its
  ``last.ckpt`` (``autotimm.cli.train.resume_plan``);
- the rest of ``n_trials`` are asked anew, as the sampler proposes them given every finished trial.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

log = logging.getLogger(__name__)


class _TrialNumberedLauncher:
    """The sweeper's launcher, each job numbered by its trial (``hydra.job.num`` = ``trial.number``)."""

    def __init__(self, launcher: Launcher, sweeper: ResumableOptunaImpl):
        self.launcher, self.sweeper = launcher, sweeper

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        numbers = self.sweeper.trial_numbers
        if len(numbers) != len(job_overrides):  # pragma: no cover - the sweeper configures one batch per launch
            return self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return self.launcher.launch(job_overrides, initial_job_idx=numbers[0])
        out: list[JobReturn] = []  # re-queued and new trials in one batch: not consecutive numbers
        for number, overrides in zip(numbers, job_overrides):
            out += self.launcher.launch([overrides], initial_job_idx=number)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


class ResumableOptunaImpl(OptunaSweeperImpl):
    """hydra-optuna-sweeper's implementation, jobs numbered by trial, ``resume=true`` (the module's docstring). The
    sweeper Hydra instantiates (``hydra_plugins.autotimm_sweeper.ResumableOptunaSweeper``: Hydra loads sweepers only
    from its ``hydra_plugins`` namespace) is a shell around it, as the upstream one is around ``OptunaSweeperImpl``."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.trial_numbers: list[int] = []
        self.launcher = _TrialNumberedLauncher(self.launcher, self)
        self.resume = bool(config.get("resume", False))

    def _configure_trials(self, trials, search_space_distributions, fixed_params):
        self.trial_numbers = [t.number for t in trials]
        return super()._configure_trials(trials, search_space_distributions, fixed_params)

    def sweep(self, arguments: list[str]) -> None:
        if self.resume:
            self._resume_study()
        return super().sweep(arguments)

    def _resume_study(self) -> None:
        import optuna
        from optuna.trial import TrialState

        if self.storage is None:
            raise ValueError("resume=true with the Optuna sweeper needs the study's storage "
                             "(hydra.sweeper.storage=sqlite:///optuna.db, as when the search was started): without "
                             "it the study was in memory and is gone")
        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:
            log.info("resume: no study %r in %s yet: the search starts", self.study_name, self.storage)
            return
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        for t in running:  # interrupted: back in the queue with its parameters, asked first, in its old folder
            study._storage.set_trial_state(t._trial_id, TrialState.WAITING)
        left = max(0, int(self.n_trials) - len(finished))
        log.info("resume: study %r holds %d finished trial(s) of n_trials=%d; %d interrupted (%s) continue in their "
                 "folders; %d to run", self.study_name, len(finished), self.n_trials, len(running),
                 ", ".join(str(t.number) for t in running) or "none", left)
        self.n_trials = left
