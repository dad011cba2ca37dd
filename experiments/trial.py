"""A run that is a trial of a search: it reports its metric each epoch and may be pruned.

`reprolab sweep` starts a trial with `--sweep ID:NUMBER --trial`: run.json's meta.sweep then
holds `trial`, and the experiment reports the search's metric to the study after each epoch's
checkpoint (`TrialHook.epoch_end`). When the pruner says so, the run stops there and ends as
PRUNED (neither FAILED nor COMPLETED), its checkpoint and final model hash recorded. The study
is opened from the run's own store (observers/studies.py), or from $REPROLAB_STUDY_STORAGE.
A rerun of a pruned trial stops at the same epoch ($REPROLAB_PRUNED_AT), so it can match it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from sacred.commandline_options import cli_option
from sacred.utils import SacredInterrupt

from experiments.loop import OneSentenceError

PRUNED_AT_VARIABLE = "REPROLAB_PRUNED_AT"  # a rerun of a pruned trial stops after this epoch


class Pruned(SacredInterrupt):
    """The search's pruner stopped this trial: Sacred records the run's status as PRUNED."""

    STATUS = "PRUNED"


@cli_option("-T", "--trial", is_flag=True)
def trial_option(args, run) -> None:
    """Record this run as a trial of its sweep's search (set by `reprolab sweep` beside the sweep option)."""
    member = run.meta_info.get("sweep")
    if not isinstance(member, dict):
        raise ValueError("--trial needs --sweep SEARCH_ID:TRIAL")
    member["trial"] = member["index"]


@dataclass
class TrialHook:
    """What a run does after each epoch as a trial: report, and stop when pruned."""

    trial: object | None = None  # optuna.trial.Trial, when this run is a trial
    metric: str = ""
    pruned_at: int | None = None  # replaying a pruned trial: stop after this epoch
    pruned: dict | None = None  # {epoch, metric, value} once pruned

    @classmethod
    def for_run(cls, run) -> TrialHook:
        """The hook of this run: a trial's, a rerun of a pruned trial's, or one that does nothing."""
        replay = os.environ.get(PRUNED_AT_VARIABLE)
        if replay:
            return cls(pruned_at=int(replay))
        member = run.meta_info.get("sweep") or {}
        if "trial" not in member:
            return cls()
        try:
            trial, metric = open_trial(run, member["id"], member["trial"])
        except (ValueError, LookupError) as error:  # RecordError is a LookupError
            message = f"trial {member['trial']} of search {member['id']}: {error}"
            raise OneSentenceError(message) from None
        return cls(trial=trial, metric=metric)

    def epoch_end(self, epoch: int, metrics: dict[str, float], last: bool = False) -> bool:
        """Report the epoch's metric; True when the run is to stop here as pruned. After the
        run's `last` epoch the pruner is not asked: stopping there saves nothing, and a trial
        that trained every epoch is a completed one, and is seen by TPE as one (TPE ranks a
        pruned trial below every completed trial)."""
        if self.pruned_at is not None:
            if epoch < self.pruned_at:
                return False
            self.pruned = {"epoch": epoch, "replayed": True}
            return True
        if self.trial is None:
            return False
        if self.metric not in metrics:
            raise OneSentenceError(
                f"the search's metric {self.metric!r} is not one this run logs "
                f"({', '.join(sorted(metrics))})"
            )
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            return False  # Optuna refuses NaN as a report; the run's own guard fails it
        self.trial.report(value, epoch)  # type: ignore[attr-defined]
        if not last and self.trial.should_prune():  # type: ignore[attr-defined]
            self.pruned = {"epoch": epoch, "metric": self.metric, "value": value}
            return True
        return False

    def finish(self, run) -> None:
        """End a pruned run as PRUNED (its info says at which epoch); nothing otherwise."""
        if self.pruned is None:
            return
        run.info["pruned"] = self.pruned
        raise Pruned(f"pruned after epoch {self.pruned['epoch']}")


def open_trial(run, study_id: str, number: int):
    """The Optuna trial this run is, from its store's study (or $REPROLAB_STUDY_STORAGE), with the
    pruner its search declared; and the metric it reports."""
    import optuna

    from experiments.sweeps.record import SweepBook
    from experiments.sweeps.space import Search
    from observers.location import StoreLocation
    from observers.studies import STORAGE_VARIABLE, open_study

    location = StoreLocation.parse((run.meta_info.get("options") or {}).get("--store"))
    record = SweepBook(location).load(study_id)
    search = Search.parse(record.extra.get("search"))
    study = open_study(
        location,
        study_id,
        os.environ.get(STORAGE_VARIABLE),
        sampler=optuna.samplers.RandomSampler(),  # a trial only reports; the sampler is unused
        pruner=search.make_pruner(),
    )
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ValueError(f"the study holds no trial {number}")
    return optuna.trial.Trial(study, trials[number]._trial_id), search.metric
