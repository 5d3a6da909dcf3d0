"""The --time-budget arithmetic of focalnet.train.budget, as pure functions, and the phases of train() called alone."""
from __future__ import annotations

import pytest

from focalnet.train import budget
from focalnet.train.config import TrainConfig
from focalnet.train.distributed import DistEnv
from focalnet.train.run import build_parts, configure, load_data, plan_run


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
    assert data.updates_per_epoch == 6 and setup.recipe.img_size == 8  # the data's native size filled in
    parts = build_parts(setup, data)
    plan = plan_run(setup, data, parts)
    assert plan.epochs == 3 and plan.total_updates == 18 and not plan.planned
    assert plan.resolved["epochs"] == 3 and plan.resolved["output"] == str(tmp_path / "run")
    # nothing is written before the run begins but the lock that makes process 0 the folder's one owner
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".focalnet-train.lock"]
    setup.lock.release()
    assert not any((tmp_path / "run").iterdir())
    assert parts.global_batch == 64 and parts.model is parts.core  # one process: no DDP wrapper
