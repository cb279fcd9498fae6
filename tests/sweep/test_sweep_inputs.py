"""What the driver's input phase decides before any cluster work (no Ray): an evaluation the config asks for gets the
saved policies it needs, a held-out set too small for any verdict but ``stalled`` is refused (too small for a usable
one, warned about), both with ``--dry-run`` too, and a Ray job's outputs are kept out of Ray's temporary copy of its
working dir."""

from __future__ import annotations

import pytest

from sweep import run
from sweep.cluster.job_dir import job_working_dir, outside_job_dir
from sweep.config import load_sweep_config
from sweep.driver.inputs import LEARNING_THRESHOLD_WARNING, check_held_out_size, with_policies_saved
from sweep.errors import SweepInputError
from trainers.protocol import HELD_OUT_ACCURACY, ReportKey
from trainers.verdicts import VerdictConfig, judge_behaviour

SMALL_BENCHMARKS = ["mt_bench.eval.max_new_tokens=64", "alpaca_eval.eval.max_new_tokens=64"]


def _verdict(accuracy: float, n_pairs: int, stall_z: float = 2.0) -> str:
    evaluation = {ReportKey.STEP.value: 10, HELD_OUT_ACCURACY: accuracy}
    return judge_behaviour([evaluation], n_pairs, VerdictConfig(stall_z=stall_z)).status


@pytest.mark.parametrize("benchmark", ["mt_bench", "alpaca_eval"])
def test_an_evaluation_that_scores_trials_turns_saving_their_policies_on(benchmark):
    config = load_sweep_config("smoke", [f"{benchmark}.policy=top_k"])  # smoke itself has train.save_model false
    assert not config.train.save_model
    saved, line = with_policies_saved(config)
    assert saved.train.save_model and line is not None
    assert f"{benchmark}.policy=top_k" in line and "train.save_model=true" in line
    assert saved.grid == config.grid and saved.train.max_steps == config.train.max_steps  # nothing else changes
    unscored = load_sweep_config("smoke", ["mt_bench.policy=none", "alpaca_eval.policy=none"])
    assert with_policies_saved(unscored) == (unscored, None)
    kept = load_sweep_config("smoke", [f"{benchmark}.policy=all", "train.save_model=true"])
    assert with_policies_saved(kept) == (kept, None)


def test_dry_run_says_the_policies_are_saved(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--config", "smoke", "--dry-run", f"storage_path={tmp_path}", *SMALL_BENCHMARKS]
    assert run.main([*argv, "mt_bench.policy=all", "alpaca_eval.policy=top_k"]) == run.EXIT_OK
    out = capsys.readouterr().out
    assert "[sweep] train.save_model=true (was false): mt_bench.policy=all and alpaca_eval.policy=top_k" in out


@pytest.mark.parametrize("n_pairs", [1, 2, 3, 4])
def test_a_held_out_set_no_accuracy_can_pass_is_refused(n_pairs):
    # The verdict rules themselves call a perfect trial on this many pairs stalled; one pair more and it is stable.
    assert _verdict(1.0, n_pairs) == "stalled" and _verdict(1.0, 5) == "stable"
    with pytest.raises(SweepInputError, match=rf"with {n_pairs} held-out pairs .*Use at least 5 held-out pairs"):
        check_held_out_size(n_pairs, VerdictConfig())
    with pytest.raises(SweepInputError, match=r"Use at least 26 held-out pairs"):  # stall_z=5: 0.5 + 5 * 0.5 / sqrt(n)
        check_held_out_size(25, VerdictConfig(stall_z=5))


def test_a_held_out_set_that_needs_a_near_perfect_accuracy_is_warned_about():
    warning = check_held_out_size(8, VerdictConfig())
    assert warning is not None and "above a held-out accuracy of 0.854" in warning
    assert f"12 held-out pairs bring the threshold to {LEARNING_THRESHOLD_WARNING:g}" in warning
    assert _verdict(0.85, 8) == "stalled" and _verdict(0.875, 8) == "stable"  # the accuracy named is the real one
    assert check_held_out_size(11, VerdictConfig()) is not None and check_held_out_size(12, VerdictConfig()) is None
    assert check_held_out_size(32, VerdictConfig()) is None  # the default config's held-out set


def test_dry_run_refuses_held_out_pairs_that_truncation_leaves_too_few(capsys, tmp_path, monkeypatch):
    """16 held-out rows read, but at max_length=44 TRL drops all but 4 (their prompts fill it): what the verdicts
    will average over is the 4, and no accuracy over 4 pairs counts as learning."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--config", "smoke", "--dry-run", f"storage_path={tmp_path}", "train.max_eval_rows=16"]
    assert run.main([*argv, "train.max_length=44"]) == run.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: train.verdicts: with 4 held-out pairs (after max_length)")
    assert "Use at least 5 held-out pairs" in err
    assert run.main(argv) == run.EXIT_OK  # all 16 kept at the smoke config's max_length: no warning either
    assert "warning" not in capsys.readouterr().err


def test_outputs_of_a_ray_job_go_under_the_home_directory_not_rays_temporary_copy(tmp_path):
    """A job's driver runs in ``<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>``: its relative output
    paths resolve against the home directory; absolute ones, URLs and remote storage stay where the user put them."""
    package = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (package / "sweep").mkdir(parents=True)
    home = tmp_path / "home"
    config, line = outside_job_dir(load_sweep_config("smoke", ["output_dir=maps/smoke"]), cwd=package, home=home)
    assert (config.storage_path, config.output_dir) == (str(home / "sweep_results"), str(home / "maps" / "smoke"))
    assert config.mlflow.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert str(package) in line and f"storage_path={home / 'sweep_results'}" in line
    assert job_working_dir(package / "sweep") == package  # from a subdirectory of the copy too

    chosen = ["storage_path=/mnt/cluster_storage/x", "mlflow.tracking_uri=http://head:5000"]
    assert outside_job_dir(load_sweep_config("smoke", chosen), cwd=package, home=home)[1] is None
    relative_db = load_sweep_config("smoke", ["storage_path=s3://bucket/x", "mlflow.tracking_uri=sqlite:///db/m.db"])
    moved, _ = outside_job_dir(relative_db, cwd=package, home=home)
    assert (moved.storage_path, moved.mlflow.tracking_uri) == ("s3://bucket/x", f"sqlite:///{home / 'db' / 'm.db'}")
    untracked, _ = outside_job_dir(load_sweep_config("smoke", ["mlflow.enabled=false"]), cwd=package, home=home)
    assert untracked.mlflow.tracking_uri is None
    outside = load_sweep_config("smoke")
    assert outside_job_dir(outside, cwd=tmp_path, home=home) == (outside, None)  # a local run: nothing moves
