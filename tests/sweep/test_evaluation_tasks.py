"""Benchmark generations of several trials run at once, and each is judged while the others still generate.

The test synchronises the generations through a Ray actor instead of timing them: generation ``a`` only returns once
``a`` and ``b`` are both running (so they ran in parallel on the two free CPUs), and ``b`` only returns once the driver
has judged ``a`` (so judging overlapped with generation). A driver that waited for every generation before judging,
or a scheduler that ran one generation at a time, makes a generation time out, and the test fail.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from sweep.scoring.tasks import EVALUATION_FAILED, failure_reason, timed_call
from tests.procs import make_env, run

SCRIPT = textwrap.dedent(
    """
    import json, time
    import ray
    from sweep.scoring.tasks import as_completed, submit_generations
    from sweep.config.resources import ResourcesConfig

    ray.init(num_cpus=2, include_dashboard=False)

    @ray.remote(num_cpus=0)
    class Board:
        def __init__(self):
            self.running, self.judged = set(), set()
        def arrive(self, key):
            self.running.add(key)
        def state(self):
            return sorted(self.running), sorted(self.judged)
        def judge(self, key):
            self.judged.add(key)

    board = Board.options(name="board").remote()

    def generate(key, needs_running, needs_judged):
        if key == "broken":
            raise ValueError("no answers\\nthe model file is corrupt")
        actor = ray.get_actor("board")
        ray.get(actor.arrive.remote(key))
        deadline = time.monotonic() + 60
        while True:
            running, judged = ray.get(actor.state.remote())
            if set(needs_running) <= set(running) and set(needs_judged) <= set(judged):
                return f"answers of {key}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key}: running {running}, judged {judged}")
            time.sleep(0.05)

    jobs = {"a": ("a", ["a", "b"], []), "b": ("b", ["a", "b"], ["a"]), "broken": ("broken", [], [])}
    pending = submit_generations(generate, ResourcesConfig(num_workers=1, cpus_per_worker=1), jobs)
    outcomes = []
    for done in as_completed(pending):
        outcomes.append([done.key, done.value, done.seconds, repr(done.error) if done.error else None])
        ray.get(board.judge.remote(done.key))
    print(json.dumps(outcomes))
    """
)


def test_generations_run_in_parallel_and_are_judged_as_they_finish(tmp_path: Path, short_tmp: Path) -> None:
    done = run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=make_env(short_tmp), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = {key: (value, seconds, error) for key, value, seconds, error in json.loads(done.stdout.splitlines()[-1])}
    assert json.loads(done.stdout.splitlines()[-1])[0][0] == "a"  # judged first, while b was still generating
    assert outcomes["a"][:1] == ("answers of a",) and outcomes["b"][:1] == ("answers of b",)
    assert outcomes["a"][2] is None and outcomes["b"][2] is None and outcomes["a"][1] > 0
    value, seconds, error = outcomes["broken"]  # a failure is an outcome, not an exception that ends the loop
    assert value is None and seconds != seconds and "ValueError" in error


def test_failure_reason_names_the_error_and_its_last_line() -> None:
    reason = failure_reason(ValueError("no answers\nthe model file is corrupt"))
    assert reason == f"{EVALUATION_FAILED} ValueError: the model file is corrupt"
    assert len(failure_reason(RuntimeError("x" * 2000))) == 500


def test_timed_call_returns_the_result_and_its_duration() -> None:
    result, seconds = timed_call(sorted, [3, 1, 2])
    assert result == [1, 2, 3] and 0 <= seconds < 60
    with pytest.raises(ZeroDivisionError):
        timed_call(divmod, 1, 0)
