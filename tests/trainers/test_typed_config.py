"""The one config mechanism (``trainers/typed_config``): declared fields, validation, building from plain data,
``key=value`` overrides, generated ``--help`` and command-line aliases; and the project's configs declared with it."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import pytest

from evaluation.mt_bench.config import EvalConfig
from sweep.config import SweepConfig
from trainers.collapse import DivergenceConfig
from trainers.config import LossConfig, TrainConfig, TrialConfig
from trainers.typed_config import (
    ConfigError,
    add_config_arguments,
    apply_overrides,
    build,
    field_at,
    field_docs,
    fields_help,
    option,
    overrides_from_args,
    to_dict,
    validate,
)


@dataclass
class Inner:
    """A nested section with a cross-field rule."""

    low: int = option(1, ge=1, help="Lower bound.")
    high: int = option(5, ge=1, help="Upper bound.")
    rate: float = option(0.5, gt=0, lt=1, help="A fraction.")

    def __post_init__(self) -> None:
        validate(self, label="inner")

    def _check(self) -> None:
        if self.high < self.low:
            raise ConfigError(f"({self.high}) must be >= low ({self.low})", "high")


@dataclass
class Root:
    """A root config exercising every supported type."""

    mode: Literal["fast", "slow"] = option("fast", help="How to run.")
    name: str = option("run", nonempty=True, help="A name.")
    tag: str | None = option(None, pattern=r"[a-z]+", expected="lower-case letters", help="An optional tag.")
    count: int | None = option(None, gt=0, help="An optional count.")
    scale: float = option(1.0, help="Any finite number.")
    enabled: bool = option(True, help="A switch.")
    betas: list[float] = option([0.1, 0.2], gt=0, nonempty=True, unique=True, help="Positive values.")
    names: tuple[str, ...] | None = option(None, nonempty=True, unique=True, help="Optional names.")
    inner: Inner = option(Inner(), help="The nested section.")

    def __post_init__(self) -> None:
        validate(self)


# ------------------------------------------------------------------------------------------------ validate


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "medium"}, "mode must be one of ('fast', 'slow'), got 'medium'"),
        ({"name": "  "}, "name must be a non-empty string, got '  '"),
        ({"name": 3}, "name must be a non-empty string, got 3"),
        ({"tag": "ABC"}, "tag must be lower-case letters, got 'ABC'"),
        ({"count": 0}, "count must be a positive integer (or None), got 0"),
        ({"count": True}, "count must be a positive integer (or None), got True"),
        ({"count": 2.0}, "count must be a positive integer (or None), got 2.0"),
        ({"scale": math.inf}, "scale must be a finite number, got inf"),
        ({"scale": "1"}, "scale must be a finite number, got '1'"),
        ({"enabled": 1}, "enabled must be a bool (true/false), got 1"),
        ({"betas": 0.1}, "betas must be a list of finite numbers > 0, got 0.1"),
        ({"betas": []}, "betas must not be empty (expected a non-empty list of finite numbers > 0), got []"),
        ({"betas": [0.1, -1.0]}, "betas must contain finite numbers > 0, got -1.0"),
        ({"betas": [0.1, math.nan]}, "betas must contain finite numbers > 0, got nan"),
        ({"betas": [0.1, 0.1]}, "betas has duplicates: [0.1, 0.1]"),
        ({"names": ("a", "")}, "names must contain non-empty strings, got ''"),
        ({"inner": {"low": 1}}, "inner must be an Inner section, got {'low': 1}"),
    ],
)
def test_validate_names_the_field_the_value_and_what_is_expected(kwargs, message):
    with pytest.raises(ConfigError) as info:
        Root(**kwargs)
    assert str(info.value) == message


def test_validate_accepts_defaults_none_and_ints_for_floats():
    Root(tag=None, count=None, names=None)
    root = Root(scale=2, betas=[1, 2], names=("a", "b"), count=3, tag="abc")
    assert root.scale == 2 and root.names == ("a", "b")


def test_nested_errors_carry_the_dotted_path_and_a_standalone_section_its_label():
    inner = Inner()
    inner.rate = 1.5  # mutated after construction: validate() sees it through the parent
    with pytest.raises(ConfigError, match=r"^inner\.rate must be a finite number > 0 and < 1, got 1\.5$"):
        Root(inner=inner)
    with pytest.raises(ConfigError, match=r"^inner\.low must be an integer >= 1, got 0$"):
        Inner(low=0)


def test_cross_field_rules_run_after_the_field_checks_and_are_named_by_path():
    with pytest.raises(ConfigError, match=r"^inner\.high \(2\) must be >= low \(3\)$") as info:
        Inner(low=3, high=2)
    assert info.value.field == "high"
    with pytest.raises(ConfigError, match=r"^a\.b\.high \(2\) must be >= low \(3\)$"):
        build(Inner, {"low": 3, "high": 2}, "a.b")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError, match="mode"):
        Root(mode="x")


def test_mutable_defaults_are_fresh_per_object():
    first, second = Root(), Root()
    first.betas.append(0.3)
    first.inner.low = 4
    assert second.betas == [0.1, 0.2] and second.inner.low == 1


# ------------------------------------------------------------------------------------------------ build / to_dict


def test_build_coerces_plain_data():
    root = build(Root, {"scale": 3, "betas": [1, "1e-5"], "names": ["a", "b"], "inner": {"rate": "0.25"}})
    assert type(root.scale) is float and root.betas == [1.0, 1e-5] and all(type(b) is float for b in root.betas)
    assert root.names == ("a", "b")
    assert root.inner == Inner(rate=0.25)
    assert build(Root, None) == Root() == build(Root, {"inner": None})


@pytest.mark.parametrize(
    ("data", "parts"),
    [
        ({"bogus": 1}, ["unknown key(s) ['bogus']", "valid keys under config", "mode", "inner"]),
        ({"inner": {"lo": 1}}, ["unknown key(s) ['inner.lo']", "valid keys under inner: ['low', 'high', 'rate']"]),
        ({"inner": [1]}, ["inner must be a mapping of fields, got [1]"]),
        ({"count": "three"}, ["count must be a positive integer (or None), got 'three'"]),
        ({"scale": "fast"}, ["scale must be a finite number, got 'fast'"]),
        ({"inner": {"low": 0}}, ["inner.low must be an integer >= 1, got 0"]),
        ({"mode": "turbo"}, ["mode must be one of ('fast', 'slow')", "'turbo'"]),
    ],
)
def test_build_refuses_unknown_keys_and_bad_values(data, parts):
    with pytest.raises(ConfigError) as info:
        build(Root, data)
    for part in parts:
        assert part in str(info.value)


def test_to_dict_round_trips_through_build():
    root = Root(mode="slow", count=2, names=("x",), inner=Inner(low=2, high=3))
    data = to_dict(root)
    assert data["inner"] == {"low": 2, "high": 3, "rate": 0.5}
    assert build(Root, data) == root


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_parse_yaml_values_create_sections_and_later_ones_win():
    data = apply_overrides({}, ["inner.low=2", "inner.low=3", "betas=[0.5, 1e-3]", "tag=", ("name", "yes")], Root)
    assert data == {"inner": {"low": 3}, "betas": [0.5, "1e-3"], "tag": None, "name": "yes"}
    root = build(Root, data)
    assert (root.inner.low, root.betas, root.tag, root.name) == (3, [0.5, 1e-3], None, "yes")


def test_an_override_replaces_a_null_section():
    assert apply_overrides({"inner": None}, ["inner.low=2"]) == {"inner": {"low": 2}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.low", "override 'inner.low' is not of the form key=value"),
        ("inner low=1", "override key 'inner low' is not a dotted field name"),
        ("=1", "override key '' is not a dotted field name"),
        ("betas=[0.1", "override 'betas=[0.1': value is not valid YAML"),
        ("inner.lo=1", "unknown key 'inner.lo'; valid keys under inner: ['low', 'high', 'rate']"),
        ("speed=1", "unknown key 'speed'; valid keys under config: ['mode', 'name'"),
        ("mode.x=1", "unknown key 'mode.x': 'mode' is a field, not a section"),
    ],
)
def test_bad_overrides_are_refused_clearly(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [override], Root)
    assert message in str(info.value)


def test_override_into_a_value_that_is_not_a_section():
    with pytest.raises(ConfigError, match="'inner' is not a section"):
        apply_overrides({"inner": 3}, ["inner.low=1"])


def test_field_at_resolves_dotted_keys():
    found, tp = field_at(SweepConfig, "train.divergence.grad_norm_factor")
    assert found.name == "grad_norm_factor" and tp is float


# ------------------------------------------------------------------------------------------------ help


def test_fields_help_lists_every_field_with_type_default_and_help():
    text = fields_help(Root, "fields:")
    assert text.splitlines()[0] == "fields:"
    assert '  mode ({fast,slow}, default "fast")\n      How to run.' in text
    assert "  count (int | None, default null)" in text
    assert "  betas (list[float], default [0.1, 0.2])" in text
    assert "  names (list[str] | None, default null)" in text
    assert "\n  [inner] The nested section." in text
    assert "  inner.rate (float, default 0.5)\n      A fraction." in text


def test_help_defaults_come_from_the_parents_default():
    docs = {doc.key: doc for doc in field_docs(SweepConfig)}
    assert docs["train.eval_steps"].default == "10"  # SweepConfig's base trial, not TrainConfig's 0
    assert docs["train"].section and docs["train.precision"].type == "{fp32,bf16}"


@pytest.mark.parametrize("cls", [SweepConfig, TrialConfig, EvalConfig, DivergenceConfig], ids=lambda c: c.__name__)
def test_every_project_config_field_has_help(cls):
    docs = field_docs(cls)
    assert docs
    for doc in docs:
        assert doc.help.strip(), f"{cls.__name__} field {doc.key} has no help"


# ------------------------------------------------------------------------------------------------ command line

ALIASES = {"--mode": "mode", "--count": "count", "--no-enable": "!enabled", "--betas": "betas", "--low": "inner.low"}


def _parse(argv, positional=True):
    parser = argparse.ArgumentParser(prog="prog", exit_on_error=False)
    add_config_arguments(parser, Root, ALIASES, positional=positional)
    args = parser.parse_intermixed_args(argv)
    return overrides_from_args(args), build(Root, apply_overrides({}, overrides_from_args(args), Root))


def test_aliases_set_and_set_flags_set_any_field_in_command_line_order():
    overrides, root = _parse(
        ["count=9", "--mode", "slow", "--count", "2", "--no-enable", "--betas", "0.3", "0.4", "--set", "inner.high=7"]
        + ["--low", "2", "--set", "inner.low=3"]
    )
    assert overrides[0] == "count=9"  # positional ones first; the flags after them, in order
    assert overrides[1:4] == [("mode", "slow"), ("count", 2), ("enabled", False)]
    assert (root.mode, root.count, root.enabled, root.betas) == ("slow", 2, False, [0.3, 0.4])
    assert (root.inner.low, root.inner.high) == (3, 7)


def test_no_flags_means_the_defaults():
    assert _parse([]) == ([], Root())


def test_alias_values_are_typed_and_literal_choices_are_checked_by_validate():
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        _parse(["--count", "many"])
    with pytest.raises(ConfigError, match=r"mode must be one of \('fast', 'slow'\), got 'turbo'"):
        _parse(["--mode", "turbo"])


def test_alias_help_shows_the_field_and_its_default():
    parser = argparse.ArgumentParser(prog="prog")
    add_config_arguments(parser, Root, ALIASES)
    text = parser.format_help()
    assert "[inner.low, default 1]" in text and "set enabled to false" in text and "--set KEY=VALUE" in text
    assert "--mode {fast,slow}" in text


@pytest.mark.parametrize(
    ("aliases", "error"),
    [({"--x": "inner.nope"}, ConfigError), ({"--x": "!count"}, TypeError), ({"--x": "inner"}, TypeError)],
)
def test_bad_aliases_fail_when_the_parser_is_built(aliases, error):
    with pytest.raises(error):
        add_config_arguments(argparse.ArgumentParser(), Root, aliases)


# ------------------------------------------------------------------------------------------------ project configs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrainConfig(precision="fp16"), "precision must be one of ('fp32', 'bf16'), got 'fp16'"),
        (lambda: TrainConfig(on_bad_rows="skip"), "on_bad_rows must be one of ('error', 'drop'), got 'skip'"),
        (lambda: TrainConfig(max_steps=0), "max_steps must be -1 (use epochs) or an integer >= 1, got 0"),
        (lambda: TrainConfig(epochs=0.0), "epochs must be > 0 when max_steps is -1, got 0.0"),
        (lambda: TrainConfig(divergence={"window": 0}), "divergence.window must be an integer >= 1, got 0"),
        (lambda: LossConfig("dlrml", beta_mix=None), "beta_mix is needed by loss 'dlrml'"),
        (lambda: LossConfig("nope"), "name: unknown loss 'nope'"),
        (lambda: EvalConfig(judge_backend="anthropic"), "EvalConfig.judge_backend must be one of ('local', 'openai')"),
    ],
)
def test_project_configs_use_the_shared_checks(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert message in str(info.value)


def test_project_configs_keep_their_normalisations():
    assert TrainConfig(max_steps=5, epochs=0.0).epochs == 0.0  # epochs only matters when max_steps is -1
    assert LossConfig("dpo", beta_mix=-1.0).beta_mix is None  # dropped, not checked, for a loss without it
    assert TrainConfig(**TrainConfig(seed=3).as_dict()) == TrainConfig(seed=3)
    assert EvalConfig(categories=["math"]).categories == ("math",)


TRAIN_ALIASES = {
    "--loss": "loss.name",
    "--beta-kl": "loss.beta_kl",
    "--beta-mix": "loss.beta_mix",
    "--lr": "train.learning_rate",
    "--max-steps": "train.max_steps",
    "--no-save": "!train.save_model",
}


def test_trial_cli_aliases_and_every_nested_field():
    """How ``python -m trainers.train`` builds its configs: short flags plus ``--set`` for any field."""
    parser = argparse.ArgumentParser(prog="train")
    add_config_arguments(parser, TrialConfig, TRAIN_ALIASES)
    argv = ["--loss", "dpo", "--beta-kl", "0.1", "--lr", "1e-5", "--max-steps", "3", "--no-save"]
    argv += ["--set", "train.warmup_ratio=0.1", "--set", "train.divergence.grad_norm_factor=5"]
    trial = build(TrialConfig, apply_overrides({}, overrides_from_args(parser.parse_args(argv)), TrialConfig))
    assert trial.loss == LossConfig("dpo", beta_kl=0.1)
    train = trial.train
    assert (train.learning_rate, train.max_steps, train.save_model, train.warmup_ratio) == (1e-5, 3, False, 0.1)
    assert train.divergence == dataclasses.replace(DivergenceConfig(), grad_norm_factor=5.0)
    assert build(TrialConfig, {}) == TrialConfig(TrainConfig(), LossConfig())


@pytest.mark.parametrize("cls", [SweepConfig, TrialConfig, EvalConfig], ids=lambda c: c.__name__)
def test_every_field_is_settable_by_key(cls):
    """Setting each leaf field to its own default via ``--set`` builds the default config."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    argv = [arg for doc in field_docs(cls) if not doc.section for arg in ("--set", f"{doc.key}={doc.default}")]
    assert build(cls, apply_overrides({}, overrides_from_args(parser.parse_args(argv)), cls)) == cls()
