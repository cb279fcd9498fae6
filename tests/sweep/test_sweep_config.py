"""The sweep config (``sweep/config.py``, ``sweep/configs/*.yaml``) and the CLI's checks before any Ray work.

Config loading and validation run in-process; the CLI (``--help``, errors, ``--dry-run``, bad data) runs as a real
``python sweep/run.py`` subprocess in a scratch working directory, which must stay empty of sweep results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.config import CONFIG_DIR, ConfigError, SweepConfig, load_sweep_config, shipped_configs
from tests.procs import run
from trainers.losses import LOSSES
from trainers.reference.shards import reference_train_config
from trainers.typed_config import apply_overrides, field_docs

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO_ROOT / "sweep" / "run.py"
SHIPPED_YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))
RAY_STARTED = "Started a local Ray instance"
CLI_TIMEOUT_S = 300


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python sweep/run.py ARGS`` as a user would, from ``cwd``, in its own process group.

    On a timeout the whole group is killed, and whatever it started is ended, so a sweep that wrongly started Ray
    leaves no Ray processes behind.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run([sys.executable, str(RUN_SCRIPT), *args], cwd=cwd, env=env, timeout=CLI_TIMEOUT_S, linger_s=0)


def assert_no_cluster_work(proc: subprocess.CompletedProcess[str], cwd: Path) -> None:
    """Nothing reached Ray: no Ray instance, no sweep banner, nothing written to the working directory."""
    output = proc.stdout + proc.stderr
    assert RAY_STARTED not in output
    assert "[sweep]" not in output
    assert sorted(p.name for p in cwd.iterdir() if p.name != "data") == []


# ------------------------------------------------------------------------------------------------ shipped configs


def test_every_shipped_yaml_is_listed():
    assert SHIPPED_YAMLS, f"no configs in {CONFIG_DIR}"
    assert shipped_configs() == [p.stem for p in SHIPPED_YAMLS]
    assert {"default", "smoke", "mistral7b_seed"} <= set(shipped_configs())


@pytest.mark.parametrize("path", SHIPPED_YAMLS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_validates(path):
    by_name = load_sweep_config(path.stem)
    by_path = load_sweep_config(str(path))
    assert isinstance(by_name, SweepConfig)
    assert by_name == by_path
    assert by_name.grid.n_trials == len(by_name.grid.trials()) * len(by_name.grid.seeds) >= 1
    assert by_name.scheduler.metric.startswith("eval_")
    # No shipped config may leave a cell without a verdict: none prunes (CellAwareASHA would protect first seeds).
    assert by_name.scheduler.asha is False
    train = by_name.train
    if train.max_steps > 0:  # a step-count run can settle: enough held-out evaluations after the start
        assert (train.max_steps + train.extend_until_settled) // train.eval_steps >= train.verdicts.settle_evals


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.verdicts.stall_z=0", "train.verdicts.stall_z"),
        ("train.verdicts.likelihood_collapse_nats=-1", "train.verdicts.likelihood_collapse_nats"),
        ("train.verdicts.stall_z=abc", "train.verdicts.stall_z"),
        ("grid.forms=[stable,naive]", "grid.forms"),
        ("resources.placement_strategy=SPREAD_OUT", "resources.placement_strategy"),
        ("resources.placement_timeout_s=0", "resources.placement_timeout_s"),
        ("train.reference_batch_size=0", "train.reference_batch_size"),
        ("resources.reference_shards=0", "resources.reference_shards"),
        ("resources.reference_shards=1.5", "resources.reference_shards"),
        ("resources.reference_shards=all", "resources.reference_shards"),
    ],
)
def test_bad_verdict_thresholds_and_forms_are_rejected_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_sweep_config("smoke", [override])


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_peak_tflops_not_above_zero_is_rejected_naming_the_field(value):
    """The MFU's denominator: a peak of 0 or below (or NaN) is refused before any cluster work, naming the field."""
    with pytest.raises(ConfigError, match=r"resources\.peak_tflops must be a finite number > 0"):
        load_sweep_config("smoke", [f"resources.peak_tflops={value}"])
    assert load_sweep_config("smoke").resources.peak_tflops is None  # looked up by device name in the trial
    assert load_sweep_config("smoke", ["resources.peak_tflops=989"]).resources.peak_tflops == 989


def test_reference_shards_default_to_one_per_gpu_worker():
    """A GPU trial's workers share the reference pass (one shard each); on CPU it stays whole unless asked."""
    assert load_sweep_config("mistral7b_seed").resources.reference_shard_count() == 8
    assert load_sweep_config("mistral7b_seed", ["resources.reference_shards=2"]).resources.reference_shard_count() == 2
    assert load_sweep_config("smoke", ["resources.num_workers=2"]).resources.reference_shard_count() == 1
    assert load_sweep_config("smoke", ["resources.reference_shards=3"]).resources.reference_shard_count() == 3


def test_adaptive_search_loads_with_its_settings():
    config = load_sweep_config("smoke", ["search=adaptive", "adaptive.max_trials=12", "adaptive.interval_width=0.5"])
    assert config.search == "adaptive"
    assert (config.adaptive.max_trials, config.adaptive.interval_width) == (12, 0.5)
    assert load_sweep_config("smoke").search == "grid"


def test_forms_cross_only_the_lrml_family():
    grid = load_sweep_config("smoke", ["grid.losses=[dpo,discopop,dlrml]", "grid.forms=[stable,literal]"]).grid
    cells = {(t.name, t.form) for t in grid.trials()}
    assert cells == {
        ("dpo", "stable"),
        ("discopop", "stable"),
        ("discopop", "literal"),
        ("dlrml", "stable"),
        ("dlrml", "literal"),
    }


def test_seed_config_is_the_seed_experiment():
    config = load_sweep_config("mistral7b_seed")
    train, grid = config.train, config.grid
    assert train.model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert train.data == "argilla/dpo-mix-7k"
    assert train.learning_rate == pytest.approx(5e-7)
    assert (train.per_device_batch_size, train.grad_accum) == (2, 8)
    assert train.precision == "bf16"
    assert (train.max_steps, train.epochs) == (-1, 2.0)
    assert set(grid.losses) == {"dpo", "discopop", "dlrml"}
    assert (min(grid.beta_kl), max(grid.beta_kl)) == (0.01, 0.5)
    assert (min(grid.beta_mix), max(grid.beta_mix)) == (0.05, 0.5)
    assert 0.05 in grid.beta_kl and 0.2 in grid.beta_mix  # the seed's single DPO/DiscoPOP/dLRML point
    assert len(grid.seeds) >= 3
    # The DeepSpeed path is relative to the repository root, the job's working directory.
    deepspeed = REPO_ROOT / train.deepspeed
    assert deepspeed.is_file(), f"train.deepspeed {train.deepspeed!r} does not exist"
    assert json.loads(deepspeed.read_text())["zero_optimization"]["stage"] == 3
    assert config.resources.use_gpu
    assert config.resources.per_trial()["GPU"] == 8
    mixes, forms = len(grid.beta_mix), len(grid.forms)
    assert forms == 2  # the published (literal) LRML beside its stable rewrite
    # dpo once per beta_kl; discopop once per form; dlrml once per form and beta_mix.
    assert grid.n_trials == len(grid.seeds) * len(grid.beta_kl) * (1 + forms + forms * mixes) == 234


def test_deepspeed_config_is_found_from_any_working_directory(tmp_path, monkeypatch):
    from trainers.dpo_config import DEEPSPEED_CONFIG_DIR, resolve_deepspeed_config

    shipped = DEEPSPEED_CONFIG_DIR / "zero3_bf16.json"
    monkeypatch.chdir(tmp_path)  # not the repository root: the seed config's relative path must still resolve
    assert resolve_deepspeed_config("trainers/deepspeed/zero3_bf16.json") == shipped
    assert resolve_deepspeed_config("zero3_bf16.json") == shipped
    own = tmp_path / "trainers" / "deepspeed" / "zero3_bf16.json"
    own.parent.mkdir(parents=True)
    own.write_text("{}")
    assert resolve_deepspeed_config("trainers/deepspeed/zero3_bf16.json") == own  # the user's own file first
    with pytest.raises(FileNotFoundError, match="'zero4.json' not found"):
        resolve_deepspeed_config("zero4.json")


# ------------------------------------------------------------------------------------------------ grid size


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # beta_mix multiplies only the losses that take it: 2*2 (dpo) + 2*3*2 (dlrml) = 16.
        (["grid.losses=[dpo,dlrml]", "grid.beta_kl=[0.05,0.5]", "grid.beta_mix=[0.1,0.2,0.5]", "grid.seeds=[0,1]"], 16),
        (["grid.losses=[dpo,ipo,hinge]", "grid.beta_kl=[0.1,1]", "grid.beta_mix=[]", "grid.seeds=[0,1,2]"], 18),
        (["grid.losses=[discopop]", "grid.beta_kl=[0.1]", "grid.beta_mix=[]", "grid.seeds=[7]"], 1),
        (["grid.losses=[dlrml,dlrml_learnable]", "grid.beta_kl=[0.1]", "grid.beta_mix=[0.1,1]"], 4),
    ],
)
def test_trial_count_equals_the_grid(overrides, expected):
    grid = load_sweep_config("smoke", overrides).grid
    assert grid.n_trials == expected
    cells = grid.trials()
    assert len(cells) * len(grid.seeds) == expected
    keys = [(c.name, c.beta_kl, c.beta_mix) for c in cells]
    assert len(set(keys)) == len(keys)
    for cell in cells:
        assert (cell.beta_mix is not None) == LOSSES[cell.name].uses_beta_mix


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_reach_nested_fields_with_their_types():
    config = load_sweep_config(
        "smoke", ["grid.seeds=[0,1,2]", "train.learning_rate=1e-5", "train.divergence.grace_steps=4"]
    )
    assert config.grid.seeds == [0, 1, 2]
    # YAML 1.1 reads 1e-5 (no dot) as a string; a float field must still get a float.
    assert type(config.train.learning_rate) is float and config.train.learning_rate == 1e-5
    assert config.train.divergence.grace_steps == 4
    assert config.train.divergence.window == load_sweep_config("smoke").train.divergence.window


def test_scientific_notation_in_a_yaml_file_is_a_float(tmp_path):
    path = tmp_path / "sci.yaml"
    path.write_text("name: sci\ngrid:\n  beta_kl: [1e-2, 5e-1]\ntrain:\n  learning_rate: 1e-5\n  eval_steps: 5\n")
    config = load_sweep_config(str(path))
    assert config.grid.beta_kl == [0.01, 0.5] and all(type(b) is float for b in config.grid.beta_kl)
    assert config.train.learning_rate == 1e-5


def test_later_overrides_win_and_create_sections():
    data: dict = {}
    apply_overrides(data, ["train.divergence.window=7", "train.divergence.window=9", "mlflow.tracking_uri="])
    assert data == {"train": {"divergence": {"window": 9}}, "mlflow": {"tracking_uri": None}}


# ------------------------------------------------------------------------------------------------ validation errors

KNOWN_LOSSES = sorted(LOSSES)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(["grid.losses=[dpo,foo]"], ["grid.losses", "'foo'", *KNOWN_LOSSES], id="unknown-loss"),
        pytest.param(["grid.beta_kl=[0.1,0]"], ["grid.beta_kl", "> 0", "0.0"], id="beta-zero"),
        pytest.param(["grid.beta_kl=[-0.5]"], ["grid.beta_kl", "> 0", "-0.5"], id="beta-negative"),
        pytest.param(["grid.beta_mix=[0]"], ["grid.beta_mix", "> 0"], id="beta-mix-zero"),
        pytest.param(["grid.beta_kl=[.nan]"], ["grid.beta_kl", "finite", "nan"], id="beta-nan"),
        pytest.param(["grid.beta_mix=[.inf]"], ["grid.beta_mix", "finite", "inf"], id="beta-mix-inf"),
        pytest.param(["grid.beta_kl=[]"], ["grid.beta_kl", "non-empty"], id="empty-beta-axis"),
        pytest.param(["grid.seeds=[]"], ["grid.seeds", "non-empty"], id="empty-seeds"),
        pytest.param(["grid.losses=[]"], ["grid.losses", "non-empty"], id="empty-losses"),
        pytest.param(["grid.beta_kl=[0.1,0.1]"], ["grid.beta_kl", "duplicate", "0.1"], id="duplicate-beta"),
        pytest.param(["grid.seeds=[1,1]"], ["grid.seeds", "duplicate"], id="duplicate-seed"),
        pytest.param(["grid.losses=[dpo,dpo]"], ["grid.losses", "duplicate"], id="duplicate-loss"),
        pytest.param(
            ["grid.losses=[dpo,ipo]", "grid.beta_mix=[0.2]"],
            ["grid.beta_mix", "dpo", "ipo", "dlrml", "grid.beta_mix=[]"],
            id="beta-mix-without-mix-loss",
        ),
        pytest.param(["grid.bogus=1"], ["grid.bogus", "valid keys", "beta_kl", "seeds"], id="unknown-grid-key"),
        pytest.param(["learning_rate=1e-5"], ["learning_rate", "valid keys", "train", "grid"], id="unknown-top-key"),
        pytest.param(
            ["train.divergence.patience=3"],
            ["train.divergence.patience", "valid keys", "grace_steps"],
            id="unknown-nested-key",
        ),
        pytest.param(["train.max_steps=abc"], ["train.max_steps", "integer", "'abc'"], id="int-from-string"),
        pytest.param(["train.max_steps=2.5"], ["train.max_steps", "integer", "2.5"], id="int-from-float"),
        pytest.param(["train.learning_rate=fast"], ["train.learning_rate", "number", "'fast'"], id="float-from-word"),
        pytest.param(["resources.use_gpu=maybe"], ["resources.use_gpu", "true/false"], id="bool-from-word"),
        pytest.param(["grid.seeds=[0.5]"], ["grid.seeds", "integer", "0.5"], id="float-seed"),
        pytest.param(["grid.beta_kl=0.1"], ["grid.beta_kl", "list"], id="scalar-for-list"),
        pytest.param(["grid=[1]"], ["grid", "mapping"], id="list-for-section"),
        pytest.param(["train.precision=fp16"], ["precision", "fp32", "bf16", "fp16"], id="bad-precision"),
        pytest.param(["train.divergence.grace_steps=0"], ["grace_steps", ">= 1"], id="bad-grace"),
        pytest.param(
            ["scheduler.asha=true", "train.eval_steps=0"], ["scheduler.asha", "train.eval_steps"], id="asha-no-eval"
        ),
        pytest.param(["scheduler.metric=loss"], ["scheduler.metric", "eval_"], id="asha-on-train-loss"),
        pytest.param(["search=random"], ["search", "grid", "adaptive", "'random'"], id="unknown-search"),
        pytest.param(
            ["search=adaptive", "scheduler.asha=true"],
            ["search", "never prunes", "scheduler.asha=false"],
            id="adaptive-asha",
        ),
        pytest.param(
            ["adaptive.max_trials=0"], ["adaptive.max_trials", "positive integer", "got 0"], id="adaptive-zero-budget"
        ),
        pytest.param(["adaptive.coarse_points=1"], ["adaptive.coarse_points", ">= 2"], id="adaptive-one-point"),
        pytest.param(["adaptive.max_seeds_per_cell=0"], ["adaptive.max_seeds_per_cell", ">= 1"], id="adaptive-no-seed"),
        pytest.param(["adaptive.interval_width=0"], ["adaptive.interval_width", "> 0"], id="adaptive-width-zero"),
        pytest.param(["adaptive.interval_width=1.5"], ["adaptive.interval_width", "<= 1"], id="adaptive-width-big"),
        pytest.param(["adaptive.interval_width=.nan"], ["adaptive.interval_width", "finite"], id="adaptive-width-nan"),
        pytest.param(
            ["adaptive.initial_seeds=3", "adaptive.max_seeds_per_cell=2"],
            ["adaptive.initial_seeds", "max_seeds_per_cell"],
            id="adaptive-initial-over-max",
        ),
        pytest.param(
            ["adaptive.max_trials=ten"], ["adaptive.max_trials", "integer", "'ten'"], id="adaptive-budget-word"
        ),
        pytest.param(["name=my sweep"], ["name", "'my sweep'"], id="bad-name"),
        pytest.param(
            ["mlflow.tracking_uri=mlflow.example.com:5000"], ["mlflow.tracking_uri", "http"], id="uri-without-scheme"
        ),
        pytest.param(
            ["mt_bench.eval.generation_backend=vllm"],
            ["mt_bench.eval.generation_backend", "resources.use_gpu"],
            id="mt-bench-vllm-without-gpu",
        ),
        pytest.param(
            ["alpaca_eval.eval.generation_backend=vllm", "resources.use_gpu=false"],
            ["alpaca_eval.eval.generation_backend", "resources.use_gpu"],
            id="alpaca-eval-vllm-without-gpu",
        ),
        pytest.param(
            ["mt_bench.eval.vllm_gpu_memory_utilization=0"],
            ["mt_bench.eval.vllm_gpu_memory_utilization", "> 0 and <= 1"],
            id="vllm-memory-zero",
        ),
    ],
)
def test_invalid_config_names_the_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_sweep_config("smoke", overrides)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{part!r} missing from error: {message}"


@pytest.mark.parametrize(
    "uri", ["http://alice:s3cr3t-pw@mlflow.example.com:5000", "https://s3cr3t-token@mlflow.example.com"]
)
def test_mlflow_uri_with_embedded_credentials_is_refused_without_echoing_them(uri):
    with pytest.raises(ConfigError) as info:
        load_sweep_config("smoke", [f"mlflow.tracking_uri={uri}"])
    message = str(info.value)
    assert "mlflow.tracking_uri" in message and "MLFLOW_TRACKING_TOKEN" in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("grid.seeds", "key=value"),
        ("grid seeds=[1]", "dotted field name"),
        ("=3", "dotted field name"),
        ("grid.beta_kl=[0.1, 0.2", "not valid YAML"),
    ],
)
def test_bad_override_syntax(override, expected):
    with pytest.raises(ConfigError, match="override") as info:
        load_sweep_config("smoke", [override])
    assert expected in str(info.value)


def test_malformed_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ngrid:\n  beta_kl: [0.1, 0.2\n")
    with pytest.raises(ConfigError, match="malformed YAML") as info:
        load_sweep_config(str(path))
    assert str(path) in str(info.value)


def test_non_utf8_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_sweep_config(str(path))
    assert str(path) in str(info.value)


def test_yaml_file_whose_top_level_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- dpo\n- dlrml\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_sweep_config(str(path))


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError) as info:
        load_sweep_config("mistral7b")
    message = str(info.value)
    assert "'mistral7b'" in message
    for name in shipped_configs():
        assert name in message


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_sweep_config(str(path))
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------ the CLI


def test_help_documents_every_field(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for flag in ("--config", "--mlflow-uri", "--no-mlflow", "--name", "--resume", "--address", "--dry-run"):
        assert flag in text
    for name in shipped_configs():
        assert name in text
    for flag in ("--set", "key=value"):
        assert flag in text
    rows = field_docs(SweepConfig)
    assert len(rows) > 40
    for row in rows:
        assert row.help.strip(), f"config field {row.key} has no description"
        if row.section:
            assert f"[{row.key}]" in text, f"section {row.key} missing from --help"
        else:
            assert f"  {row.key} ({row.type}, default {row.default})" in text, f"field {row.key} missing from --help"
    assert_no_cluster_work(proc, tmp_path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "smoke", "grid.beta_kl=[0.1,-1]"], "grid.beta_kl must contain finite numbers > 0"),
        (["--config", "smoke", "grid.losses=[dpo,dpo_v2]"], "unknown loss 'dpo_v2'"),
        (["--config", "no_such_config"], f"shipped configs: {[path.stem for path in SHIPPED_YAMLS]}"),
        (["--config", "smoke", "grid.seeds"], "not of the form key=value"),
        (["--config", "smoke", "--mlflow-uri", "http://bob:hunter2@h:5000"], "must not embed credentials"),
        (["--config", "smoke", "--name", "bad/name"], "name must be a simple identifier"),
        (["--config", "smoke", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
    ids=["negative-beta", "unknown-loss", "unknown-config", "override-syntax", "uri-credentials", "name", "flag"],
)
def test_cli_errors_exit_2_before_any_ray_work(tmp_path, args, expected):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "usage: python sweep/run.py" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert_no_cluster_work(proc, tmp_path)


def test_dry_run_prints_the_trial_list(tmp_path):
    # Overrides may come before, between and after the flags.
    proc = run_cli(
        *("--config", "smoke", "grid.beta_kl=[0.1,0.5]", "--no-mlflow", "grid.seeds=[0,3]"),
        *("--dry-run", "train.max_steps=5"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "sweep smoke: 8 trials x 5 steps" in lines
    assert any(line.startswith("data: train: 16 pairs read, 0 dropped (prompt fills max_length=64)") for line in lines)
    assert any(line.startswith("data: held-out: 8 pairs read") for line in lines)
    trials = [line.strip() for line in lines if line.startswith("  ")]
    assert trials == [
        f"{loss} bkl={bkl}{mix} seed={seed}"
        for loss, mix in (("dpo", ""), ("dlrml", " bmix=0.2"))
        for bkl in (0.1, 0.5)
        for seed in (0, 3)
    ]
    assert_no_cluster_work(proc, tmp_path)


def _write_jsonl(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(row + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (None, ["missing.jsonl", "does not exist"]),
        (
            ['{"prompt": "2+2?", "chosen": "4", "rejected": "5"}', '{"prompt": "3+3?", "chosen": '],
            ["bad.jsonl", "line 2", "JSON"],
        ),
    ],
    ids=["missing-file", "malformed-jsonl"],
)
def test_bad_data_file_exits_2_naming_the_problem(tmp_path, rows, expected):
    data = tmp_path / "data" / ("missing.jsonl" if rows is None else "bad.jsonl")
    if rows is not None:
        _write_jsonl(data, rows)
    proc = run_cli("--config", "smoke", f"train.data={data}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: train.data")
    for part in expected:
        assert part in error
    assert "Traceback" not in proc.stderr
    assert_no_cluster_work(proc, tmp_path)


def test_nan_beta_in_a_config_file_is_refused_by_the_cli(tmp_path):
    path = tmp_path / "data" / "nan.yaml"
    path.parent.mkdir()
    path.write_text("name: nan-beta\ngrid:\n  losses: [dpo]\n  beta_kl: [0.1, .nan]\n  beta_mix: []\n")
    proc = run_cli("--config", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "grid.beta_kl must contain finite numbers > 0, got nan" in proc.stderr
    assert_no_cluster_work(proc, tmp_path)


def test_trial_module_leaves_the_ml_stack_to_the_worker(tmp_path):
    """Each trial's Tune actor and Train controller import ``sweep.trials.trainable``; importing transformers, TRL or
    datasets there would cost every trial seconds of start-up. Only the worker function may import them."""
    probe = (
        "import sys; import sweep.trials.trainable; "
        "heavy = ('transformers', 'trl', 'datasets', 'evaluation.mt_bench.pipeline'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    proc = run([sys.executable, "-c", probe], cwd=tmp_path, env=env, timeout=CLI_TIMEOUT_S, linger_s=0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_dry_run_on_hh_rlhf_says_what_truncation_drops_and_refuses_too_few_pairs(tmp_path, shared_dir):
    """The HH-RLHF sample at max_length=64: one malformed row dropped, then TRL would drop most pairs whose prompt
    alone fills 64 tokens; the dry run says so, and refuses when fewer pairs remain than one step needs."""
    sample = shared_dir / "data" / "hh_rlhf_harmless_test_300.jsonl"
    if not sample.is_file():
        pytest.skip(f"no HH-RLHF sample at {sample}")
    # Two held-out pairs survive max_length=64: a stall_z that lets them decide (the held-out check is another test's).
    stall_z = "train.verdicts.stall_z=0.5"
    common = (
        "--config",
        "smoke",
        "--no-mlflow",
        f"train.data={sample}",
        "train.on_bad_rows=drop",
        stall_z,
        "--dry-run",
    )
    proc = run_cli(*common, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    summary = [line for line in out.splitlines() if line.startswith("data: ")]
    assert summary and "malformed" in summary[0], out[-3000:]
    train_line = next(line for line in summary if line.startswith("data: train:"))
    dropped = int(train_line.split(", ")[1].split(" ")[0])
    assert "would keep every pair whole" in train_line
    too_big_batch = run_cli(*common, "train.per_device_batch_size=64", cwd=tmp_path)
    assert too_big_batch.returncode == 2
    assert "train.data: only" in too_big_batch.stderr and "one optimizer step needs 64" in too_big_batch.stderr
    assert dropped > 0, train_line  # the issue's finding: most train pairs' prompts fill 64 tokens


def test_vllm_generation_is_accepted_on_gpu_trials():
    config = load_sweep_config(
        "smoke",
        ["resources.use_gpu=true", "mt_bench.eval.generation_backend=vllm", "alpaca_eval.eval.generation_backend=vllm"],
    )
    assert config.mt_bench.eval.generation_backend == config.alpaca_eval.eval.generation_backend == "vllm"


def test_every_shipped_config_gives_the_reference_pass_a_valid_config(tmp_path):
    """The reference pass builds its trainer from the sweep's trial config cut to one step; the trial-length rules
    (``min_steps``, ``extend_until_settled``) must go with it, or ``discopop_beta_sweep`` (min_steps 9) fails in the
    reference pass after the cluster has started."""
    for name in shipped_configs():
        train = load_sweep_config(name).train
        reference = reference_train_config(train, tmp_path / name)
        assert (reference.max_steps, reference.min_steps, reference.extend_until_settled) == (1, None, 0), name
        assert (reference.model, reference.max_length, reference.precision) == (
            train.model,
            train.max_length,
            train.precision,
        ), name
