"""The --time-budget arithmetic of focalnet.train.budget, as pure functions, and the phases of train() called alone."""
from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from focalnet.train import budget
from focalnet.train.budget import with_total_updates
from focalnet.train.config import TrainConfig
from focalnet.train.distributed import DistEnv
from focalnet.train.run import build_parts, configure, load_data, plan_run, run_config


def replan_as_before(budget_s, elapsed_s, update_s, overhead_s, steps_done, updates_per_epoch):
    """The re-plan as the trainer computed it inline before it became a function."""
    more = budget.updates_that_fit(budget_s - elapsed_s, update_s=update_s * 1.02, eval_s=overhead_s * 1.02,
                                   updates_per_epoch=updates_per_epoch, minimum=0)
    return steps_done + more


def test_replan_counts_the_steps_that_fit_in_the_rest_of_the_budget():
    # 65 s left, 1.02 s per update, 5.1 s per epoch outside its updates: 53 more steps (2 epochs' evaluations)
    assert budget.replan_updates(100, elapsed_s=35, update_s=1.0, overhead_s=5.0, steps_done=30,
                                 updates_per_epoch=30) == 83
    # 80 s left at 0.51 s per update and 2.04 s per epoch: 136 more steps (5 epochs, the last one partial)
    assert budget.replan_updates(100, elapsed_s=20, update_s=0.5, overhead_s=2.0, steps_done=30,
                                 updates_per_epoch=30) == 30 + 136
    # the first epoch used the whole budget: no step more (not even the one `updates_that_fit` grants a new run)
    assert budget.replan_updates(10, elapsed_s=12, update_s=1.0, overhead_s=1.0, steps_done=6,
                                 updates_per_epoch=6) == 6


@pytest.mark.parametrize("budget_s,elapsed_s,update_s,overhead_s,steps_done,per_epoch", [
    (600, 61.3, 0.021, 3.7, 469, 469), (60, 7.9, 0.0123, 0.61, 6, 6), (4, 3.99, 0.001, 0.2, 12, 12),
    (3600, 400.0, 0.35, 40.0, 1000, 1000), (100, 5.0, 0.0, 1.0, 3, 7),
])
def test_replan_gives_the_numbers_of_the_inline_computation(budget_s, elapsed_s, update_s, overhead_s, steps_done,
                                                            per_epoch):
    got = budget.replan_updates(budget_s, elapsed_s=elapsed_s, update_s=update_s, overhead_s=overhead_s,
                                steps_done=steps_done, updates_per_epoch=per_epoch)
    assert got == replan_as_before(budget_s, elapsed_s, update_s, overhead_s, steps_done, per_epoch)


def test_first_plan_keeps_a_margin_and_counts_the_probe():
    # 100 s - 10 s of probing; 1.04 s per update and 10.4 s per evaluation: 2 whole epochs of 30 (a 3rd,
    # with its evaluation, would leave room for fewer updates than the first two hold)
    assert budget.plan_updates(100, probe_s=10, update_s=1.0, eval_s=10.0, updates_per_epoch=30) == 60
    assert budget.plan_updates(1, probe_s=10, update_s=1.0, eval_s=10.0, updates_per_epoch=30) == 1  # at least one


def test_overrun_check_uses_the_typical_epoch():
    # the first epoch (slow warm-up) does not count more than the median
    est = budget.next_epoch_seconds(remaining_updates=100, updates_per_epoch=10, update_times=[3.0, 1.0, 1.0],
                                    overheads=[5.0, 2.0, 2.0])
    assert est == pytest.approx(10 * 1.0 + 2.0)
    # a partial last epoch
    assert budget.next_epoch_seconds(remaining_updates=4, updates_per_epoch=10, update_times=[1.0],
                                     overheads=[2.0]) == pytest.approx(6.0)
    assert not budget.overruns(100, elapsed_s=90, next_epoch_s=12)  # 102 s: inside the 2% tolerance
    assert budget.overruns(100, elapsed_s=90, next_epoch_s=12.5)


def test_phases_before_the_loop_can_be_called_alone(tmp_path):
    cfg = TrainConfig(data="digits", arch=dict(embed_dim=8, depths=[1, 1], patch_size=2), batch_size=64,
                      limit_train=384, epochs=3, progress="off", output=str(tmp_path / "run"))
    setup = configure(cfg, DistEnv())
    data = load_data(setup)
    assert data.updates_per_epoch == 6 and data.recipe.img_size == 8  # the data's native size filled in
    parts = build_parts(setup, data)
    plan = plan_run(setup, data, parts)
    assert plan.epochs == 3 and plan.total_updates == 18 and not plan.planned
    resolved = run_config(setup, data.recipe, plan)  # config.yaml: the epochs are the plan's, nowhere else
    assert resolved["epochs"] == 3 and resolved["output"] == str(tmp_path / "run")
    # what the phases hand on is frozen: a later phase reads it and cannot edit it
    for value, name in ((setup, "cfg"), (data, "recipe"), (plan, "epochs")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    # nothing is written before the run begins but the lock that makes process 0 the folder's one owner
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".focalnet-train.lock"]
    setup.lock.release()
    assert not any((tmp_path / "run").iterdir())
    assert parts.global_batch == 64 and parts.model is parts.core  # one process: no DDP wrapper


def _run_at_epoch(tmp_path, *, budget_s: float, epochs_done: int, elapsed_s: float, update_s: float,
                  overhead_s: float):
    """A --time-budget run built by its phases and put, by hand, at the end of epoch `epochs_done` with the
    given timings (nothing is trained): what `out_of_time` decides from."""
    from focalnet.train.run import begin

    cfg = TrainConfig(data="digits", arch=dict(embed_dim=8, depths=[1, 1], patch_size=2), batch_size=64,
                      limit_train=384, epochs=10, progress="off", output=str(tmp_path / "run"))
    setup = configure(cfg, DistEnv())
    data = load_data(setup)
    parts = build_parts(setup, data)
    run = begin(setup, data, parts, plan_run(setup, data, parts))
    run.setup = dataclasses.replace(run.setup, cfg=dataclasses.replace(cfg, time_budget=budget_s))
    run.plan = dataclasses.replace(run.plan, planned=True)
    run.progress.global_step = epochs_done * data.updates_per_epoch
    run.progress.update_times = [update_s] * epochs_done
    run.progress.overheads = [overhead_s] * epochs_done
    return run, dict(elapsed=elapsed_s, test_top1=50.0)


def test_an_epoch_that_would_overrun_is_shortened_not_skipped(tmp_path):
    """Epoch 3 of 10 planned (6 steps each) ends at 100 s of a 125 s budget; a full epoch takes 6 x 5 + 2 = 32 s:
    the run used to stop there, leaving 25 s unused and the cosine far from its end. Now the steps left are
    re-planned to fit (4 more at 5.1 s each, and one evaluation) and the cosine ends exactly there."""
    from focalnet.train.epoch import out_of_time

    run, record = _run_at_epoch(tmp_path, budget_s=125, epochs_done=3, elapsed_s=100, update_s=5.0, overhead_s=2.0)
    before = run.plan
    assert not out_of_time(run, 2, record) and run.progress.stopped_early is None
    assert run.plan.total_updates == 18 + 4 and run.plan.epochs == 4
    assert (before.total_updates, before.epochs) == (60, 10)  # a new plan: the old one is untouched
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["epochs"] == 4
    lr_end = run.plan.scheduler._get_lr(run.plan.total_updates)[0]
    assert lr_end == pytest.approx(min(run.plan.scheduler._get_lr(t)[0] for t in range(0, 24)))  # annealed there
    run.setup.lock.release()


def test_the_run_stops_only_when_not_one_more_step_fits(tmp_path):
    from focalnet.train.epoch import out_of_time

    run, record = _run_at_epoch(tmp_path, budget_s=100, epochs_done=3, elapsed_s=99.0, update_s=5.0, overhead_s=2.0)
    assert out_of_time(run, 2, record)
    assert "not one more step fits" in run.progress.stopped_early
    run.setup.lock.release()


def test_a_plan_that_would_leave_time_unused_is_lengthened(tmp_path):
    """Epoch 3 of 4 planned (6 steps each) ends at 60 s of a 125 s budget, each later epoch 6 x 5 + 2 = 32 s: the
    plan would end at 92 s, a quarter of the budget unused (the plan after the first epoch was made from its
    slower steps). The steps left are re-planned to end where the time does, and the cosine with them."""
    from focalnet.train.epoch import out_of_time

    run, record = _run_at_epoch(tmp_path, budget_s=125, epochs_done=3, elapsed_s=60, update_s=5.0, overhead_s=2.0)
    run.plan = with_total_updates(run.plan, 24, epoch=2, steps_done=18)
    assert not out_of_time(run, 2, record) and run.progress.stopped_early is None
    more = run.plan.total_updates - 18
    assert 60 + more * 5.0 + math.ceil(more / 6) * 2.0 <= 125  # fits
    assert 60 + (more + 2) * 5.1 + math.ceil((more + 2) / 6) * 2.04 > 125  # and uses the budget (within a step)
    lr_end = run.plan.scheduler._get_lr(run.plan.total_updates)[0]
    assert lr_end == pytest.approx(min(run.plan.scheduler._get_lr(t)[0] for t in range(0, run.plan.total_updates + 1)))
    run.setup.lock.release()


def test_a_plan_that_ends_near_the_budget_is_kept(tmp_path):
    from focalnet.train.epoch import out_of_time

    run, record = _run_at_epoch(tmp_path, budget_s=125, epochs_done=3, elapsed_s=60, update_s=5.0, overhead_s=2.0)
    run.plan = with_total_updates(run.plan, 30, epoch=2, steps_done=18)  # ends at 60 + 60 + 4 = 124 s
    before = run.plan
    assert not out_of_time(run, 2, record)
    assert run.plan is before
    run.setup.lock.release()
