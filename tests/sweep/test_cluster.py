"""Deployment artefacts: the Ray cluster launcher config, the KubeRay manifest, the Docker image, the runbook.

No cloud, Kubernetes API or Docker engine is reachable here, so every artefact is checked by the real tool
that consumes it, as far as that tool runs offline:

- ``cluster/ray-cluster.yaml`` goes through Ray's own ``prepare_config`` + ``validate_config`` (the
  ``ray-schema.json`` that ``ray up`` validates against); its ``ray start`` lines are parsed by Ray's CLI and
  its MLflow command by MLflow's CLI, and that MLflow command is started for real on the loopback interface
  to check which clients its host-header protection admits.
- ``cluster/rayjob.yaml`` is checked against the fields KubeRay's ``RayJob`` CRD requires and against the
  rest of the deployment (images, Ray version, MLflow Service, entrypoint).
- ``docker/Dockerfile`` is read with Docker's own parser and compared with ``pyproject.toml``.
- ``cluster/README.md``: every ``ray`` command is parsed by Ray's CLI; every entrypoint it names must exist.
- ``trainers/deepspeed/*.json`` are filled by transformers' DeepSpeed integration and parsed by DeepSpeed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import dockerfile
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "cluster" / "ray-cluster.yaml"
RAYJOB_YAML = REPO_ROOT / "cluster" / "rayjob.yaml"
RUNBOOK = REPO_ROOT / "cluster" / "README.md"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PYPROJECT = REPO_ROOT / "pyproject.toml"
DEEPSPEED_CONFIGS = sorted((REPO_ROOT / "trainers" / "deepspeed").glob("*.json"))

SEED_CONFIG = "mistral7b_seed"
SWEEP_SCRIPT = "sweep/run.py"
MISTRAL_7B_HIDDEN_SIZE = 4096
GPU_INSTANCES = {"p4d.24xlarge": {"CPU": 96, "GPU": 8}, "p5.48xlarge": {"CPU": 192, "GPU": 8}}
"""AWS 8-GPU instance types a trial may run on, with their vCPU and GPU counts."""

SHELL_PREFIX_WORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "nohup", "exec", "time"}
"""Words that may precede the command proper in a simple command (``else nohup mlflow server ...``)."""
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "*", ""}
SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|APIKEY)(?:_|$)", re.I)
SECRET_LITERAL = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MLFLOW_API = "/api/2.0/mlflow/experiments/search?max_results=1"


# ---------------------------------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)


def _k8s_docs() -> list[dict]:
    with RAYJOB_YAML.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _k8s_doc(kind: str, name: str | None = None) -> dict:
    """The one object of ``kind`` (and ``name``, when given) in the KubeRay manifest."""
    matches = [d for d in _k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''} in {RAYJOB_YAML.name}, found {len(matches)}"
    return matches[0]


def _pyproject() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _project_requirements() -> dict[str, Requirement]:
    """The ``[project].dependencies`` of pyproject.toml by canonical name."""
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _shell_segments(command: str) -> list[list[str]]:
    """Split a shell command line into simple commands (token lists) at ``;``, ``&&``, ``|``, ``$(``...

    Quoting is honoured (a quoted ``;`` stays inside its word); variables are left unexpanded.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(";&|()"):
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _command_words(tokens: list[str]) -> list[str]:
    """Drop leading ``NAME=value`` words and shell keywords / ``nohup`` from a simple command."""
    i = 0
    while i < len(tokens) and (tokens[i] in SHELL_PREFIX_WORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[i])):
        i += 1
    return tokens[i:]


def _parse_cli(root: click.Group, argv: list[str]) -> tuple[list[str], dict]:
    """Parse ``argv`` with a click CLI the way it would run, without invoking the command.

    Returns:
        The sub-command path (e.g. ``["job", "submit"]``) and the parsed parameters.

    Raises:
        click.UsageError: on an unknown command, unknown option or a missing argument.
    """
    command: click.Command = root
    path: list[str] = []
    rest = list(argv)
    while isinstance(command, click.Group):
        if not rest or rest[0] not in command.commands:
            raise click.UsageError(f"unknown command {' '.join([*path, *rest[:1]])!r}")
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    ctx = command.make_context(" ".join(path), rest)
    return path, ctx.params


def _ray_cli() -> click.Group:
    from ray.scripts.scripts import cli

    return cli


def _mlflow_cli() -> click.Group:
    from mlflow.cli import cli

    return cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- Dockerfile model


@dataclass
class DockerStage:
    """One ``FROM`` stage of a Dockerfile: its base, alias and instructions after ``FROM``."""

    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs as Docker's own (BuildKit) parser reads the file.

    Continuations are joined and comments dropped by that parser; ``ENV`` pairs come back as ``k=v`` words
    and exec-form (JSON) commands as shell-quoted words.
    """
    instructions = []
    for command in dockerfile.parse_file(str(path)):
        keyword = command.cmd.upper()
        if keyword == "ENV":
            pairs = zip(command.value[::2], command.value[1::2], strict=True)
            args = " ".join(f"{k}={shlex.quote(v)}" for k, v in pairs)
        elif keyword == "RUN" and not command.json:
            args = " ".join([*command.flags, command.value[0]])
        else:
            args = " ".join([*command.flags, *(shlex.quote(v) if command.json else v for v in command.value)])
        instructions.append((keyword, args))
    return instructions


def _expand(value: str, variables: dict[str, str]) -> str:
    """Expand ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` the way Docker does for ARG/ENV values."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        if name in variables and variables[name] != "":
            return variables[name]
        return default if default is not None else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, value)


def _arg_default(args: str) -> tuple[str, str | None]:
    """``ARG NAME[=default]`` as ``(name, default)``; the default is ``None`` when there is none."""
    name, sep, default = args.partition("=")
    if not sep:
        return name.strip(), None
    words = shlex.split(default)
    return name.strip(), words[0] if words else ""


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARG defaults and its stages."""

    global_args: dict[str, str]
    stages: list[DockerStage]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        global_args: dict[str, str] = {}
        stages: list[DockerStage] = []
        for keyword, args in _dockerfile_instructions(path):
            if keyword == "FROM":
                words = args.split()
                words = [w for w in words if not w.startswith("--platform")]
                alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                stages.append(DockerStage(base=words[0], alias=alias))
            elif not stages:
                assert keyword == "ARG", f"only ARG may precede the first FROM, found {keyword}"
                name, default = _arg_default(args)
                global_args[name] = default or ""
            else:
                stages[-1].instructions.append((keyword, args))
        return cls(global_args=global_args, stages=stages)

    @property
    def final(self) -> DockerStage:
        return self.stages[-1]

    def stage_args(self, stage: DockerStage, overrides: dict[str, str] | None = None) -> dict[str, str]:
        """Build-arg values visible in ``stage`` (ARG redeclarations inherit the global defaults)."""
        overrides = overrides or {}
        visible: dict[str, str] = {}
        for keyword, args in stage.instructions:
            if keyword == "ARG":
                name, default = _arg_default(args)
                if name in overrides:
                    visible[name] = overrides[name]
                elif default is None:
                    visible[name] = self.global_args.get(name, "")
                else:
                    visible[name] = default
        return visible


@dataclass
class PipInstall:
    """One ``pip install`` invocation in a ``RUN`` instruction."""

    options: list[str]
    requirements: list[str]
    instruction_index: int


PIP_OPTIONS_WITH_VALUE = frozenset(
    [
        "-i",
        "--index-url",
        "--extra-index-url",
        "-c",
        "--constraint",
        "-r",
        "--requirement",
        "-f",
        "--find-links",
        "-t",
        "--target",
        "--prefix",
        "--root",
        "--upgrade-strategy",
        "-C",
        "--config-settings",
        "--platform",
        "--python-version",
        "--implementation",
        "--abi",
        "--no-binary",
        "--only-binary",
        "--progress-bar",
        "--report",
        "--src",
        "-e",
        "--editable",
    ]
)


def _pip_installs(stage: DockerStage, variables: dict[str, str]) -> list[PipInstall]:
    """Every ``pip install`` (or ``python -m pip install``) of a stage's ``RUN`` instructions."""
    installs: list[PipInstall] = []
    for index, (keyword, args) in enumerate(stage.instructions):
        if keyword != "RUN":
            continue
        for segment in _shell_segments(args):
            tokens = _command_words(segment)
            if tokens[:2] == ["pip", "install"]:
                rest = tokens[2:]
            elif len(tokens) > 3 and tokens[1:4] == ["-m", "pip", "install"]:
                rest = tokens[4:]
            else:
                continue
            options: list[str] = []
            requirements: list[str] = []
            it = iter(rest)
            for token in it:
                if token.startswith("-"):
                    options.append(token)
                    if token in PIP_OPTIONS_WITH_VALUE:
                        options.append(next(it, ""))
                else:
                    requirements.append(_expand(token, variables))
            installs.append(PipInstall(options, requirements, index))
    return installs


def _is_project_target(requirement: str) -> bool:
    """Whether a pip argument installs the project in the work directory (``.`` or ``.[extras]``)."""
    return requirement in {".", "./"} or requirement.startswith((".[", "./["))


# ---------------------------------------------------------------------------------------- .dockerignore model


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """``(is_exception, regex)`` per .dockerignore line, in order (Go ``filepath.Match`` plus ``**``)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = os.path.normpath(pattern.lstrip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(f"^{regex}$")))
    return patterns


def _dockerignored(path: str) -> bool:
    """Whether ``path`` (relative to the build context) is excluded; an excluded directory takes its tree."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in _dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


# ---------------------------------------------------------------------------------------------- runbook model


def _runbook_commands() -> list[str]:
    """The logical command lines of the runbook's ``bash`` blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _runbook_ray_invocations() -> list[list[str]]:
    """Every ``ray ...`` simple command of the runbook, including those inside ``$(...)``."""
    invocations = []
    for command in _runbook_commands():
        for segment in _shell_segments(command):
            tokens = _command_words(segment)
            if tokens and tokens[0] == "ray":
                invocations.append(tokens[1:])
    return invocations


def _submitted_entrypoint() -> list[str]:
    """The entrypoint argv of the runbook's ``ray job submit``."""
    entrypoints = []
    for argv in _runbook_ray_invocations():
        path, params = _parse_cli(_ray_cli(), argv)
        if path == ["job", "submit"]:
            entrypoints.append(list(params["entrypoint"]))
    assert len(entrypoints) == 1, f"expected one `ray job submit` in the runbook, found {len(entrypoints)}"
    return entrypoints[0]


def _option_value(argv: list[str], option: str) -> str | None:
    """The value of ``--option VALUE`` / ``--option=VALUE`` in ``argv``, or ``None``."""
    for i, token in enumerate(argv):
        if token == option and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(option + "="):
            return token.split("=", 1)[1]
    return None


# ----------------------------------------------------------------------------- cluster launcher (ray up) YAML


def test_cluster_yaml_validates_against_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load_yaml(CLUSTER_YAML)
    # What `ray up` does before talking to AWS: merge the provider defaults, then validate against
    # ray/autoscaler/ray-schema.json plus Ray's cross-field checks (head type, worker bounds).
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_schema_validation_rejects_unknown_fields():
    """The validation above is live: a field Ray does not know fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load_yaml(CLUSTER_YAML)
    config["available_node_types"][config["head_node_type"]]["gpu_count"] = 8
    with pytest.raises(jsonschema.ValidationError, match="gpu_count"):
        validate_config(prepare_config(config))


def test_cluster_yaml_node_types():
    config = _load_yaml(CLUSTER_YAML)
    types_ = config["available_node_types"]
    head = types_[config["head_node_type"]]
    assert config["provider"]["type"] == "aws"
    assert head["resources"].get("GPU", 0) == 0, "the head must not offer GPUs (trials belong on workers)"
    workers = {name: t for name, t in types_.items() if name != config["head_node_type"]}
    assert workers, "no worker node types"
    seen_instances = set()
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in GPU_INSTANCES, f"{name}: {instance} is not an 8-GPU A100/H100 instance type"
        assert node_type["resources"] == GPU_INSTANCES[instance], f"{name}: resources do not match {instance}"
        assert node_type["min_workers"] == 0, f"{name}: GPU nodes must scale from zero"
        assert 1 <= node_type["max_workers"] <= config["max_workers"], f"{name}: bad max_workers"
        seen_instances.add(instance)
    assert seen_instances, "no GPU worker type"
    for name, node_type in types_.items():
        # Without an ImageId Ray falls back to its built-in AMI (Ubuntu 18.04, CUDA 11.2), too old for cu128.
        assert node_type["node_config"].get("ImageId"), f"{name}: node_config.ImageId is missing"


def test_cluster_yaml_ray_start_commands_parse_with_ray_cli():
    config = _load_yaml(CLUSTER_YAML)
    starts = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[key]:
            for segment in _shell_segments(command):
                if segment[:2] == ["ray", "start"]:
                    starts[key] = _parse_cli(_ray_cli(), segment[1:])[1]
    head, worker = starts["head_start_ray_commands"], starts["worker_start_ray_commands"]
    assert head["head"] and head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert head["dashboard_host"] in {"127.0.0.1", "localhost"}, "dashboard must stay on the head's loopback"
    assert worker["address"] == "$RAY_HEAD_IP:6379"


def _cluster_mlflow_command() -> tuple[str, list[str]]:
    """The head's MLflow start command and the argv of its ``mlflow server``."""
    config = _load_yaml(CLUSTER_YAML)
    found = []
    for command in config["head_start_ray_commands"]:
        for segment in _shell_segments(command):
            tokens = _command_words(segment)
            if tokens[:2] == ["mlflow", "server"]:
                argv = tokens[2:]
                redirect = next((i for i, t in enumerate(argv) if t[0] in "<>" or t[-1] in "<>"), len(argv))
                argv = argv[:redirect]
                found.append((command, argv))
    assert len(found) == 1, f"expected one `mlflow server` in head_start_ray_commands, found {len(found)}"
    return found[0]


def test_cluster_mlflow_server_binds_the_head_private_ip():
    command, argv = _cluster_mlflow_command()
    _, params = _parse_cli(_mlflow_cli(), ["server", *argv])
    host = params["host"]
    assert host not in WILDCARD_HOSTS, f"MLflow must not listen on every interface ({host!r})"
    variable = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", host)
    assert variable, f"--host must be the head's private-IP variable, got {host!r}"
    assignment = re.search(rf"\b{variable.group(1)}=(\"[^\"]*\"|\S+)", command)
    assert assignment, f"{variable.group(1)} is never assigned in the MLflow start command"
    assert "get_node_ip_address" in assignment.group(1), "the host must be the node's private (Ray) address"
    assert params["port"] == 5000
    assert params["backend_store_uri"].startswith(("sqlite:///", "postgresql"))
    assert params["artifacts_destination"].startswith("s3://"), "artifacts must go to S3"
    assert params["serve_artifacts"], "artifacts must be proxied so workers need no S3 credentials"


def test_cluster_mlflow_sqlite_store_is_on_a_host_volume():
    _, argv = _cluster_mlflow_command()
    _, params = _parse_cli(_mlflow_cli(), ["server", *argv])
    if not params["backend_store_uri"].startswith("sqlite:///"):
        pytest.skip("the backend store is a database server, not a file")
    db_dir = Path(params["backend_store_uri"].removeprefix("sqlite:///")).parent
    config = _load_yaml(CLUSTER_YAML)
    docker = config["docker"]
    mounts = [
        option.split()[1].split(":")[:2]
        for option in docker.get("run_options", []) + docker.get("head_run_options", [])
        if option.split()[0] in {"-v", "--volume"}
    ]
    host_dirs = [source for source, target in mounts if Path(target) == db_dir]
    assert host_dirs, f"the MLflow store directory {db_dir} is not mounted from the head's host"
    init = " ".join(config["initialization_commands"])
    assert any(f"mkdir -p {d}" in init for d in host_dirs), (
        "the host directory of the MLflow store is not created before the container starts"
    )


# ------------------------------------------------------------------------------------------- KubeRay manifest


def test_rayjob_has_fields_kuberay_requires():
    job = _k8s_doc("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert DNS_1123_LABEL.match(job["metadata"]["name"]), "RayJob name must be a DNS-1123 label"
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode", "SidecarMode"}
    cluster = spec["rayClusterSpec"]
    ray_spec = _project_requirements()["ray"].specifier
    assert cluster["rayVersion"] in ray_spec, f"rayVersion {cluster['rayVersion']} is not {ray_spec}"

    def check_group(group: dict, where: str) -> list[dict]:
        params = group["rayStartParams"]
        assert isinstance(params, dict), f"{where}.rayStartParams must be a map"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), (
            f"{where}.rayStartParams values must be strings"
        )
        containers = group["template"]["spec"]["containers"]
        assert containers, f"{where}.template.spec.containers is empty"
        for container in containers:
            assert container.get("name") and container.get("image"), f"{where}: container without name/image"
        return containers

    check_group(cluster["headGroupSpec"], "headGroupSpec")
    groups = cluster["workerGroupSpecs"]
    assert groups, "no workerGroupSpecs"
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), "groupName must be unique"
    gpu_groups = 0
    for group in groups:
        where = f"workerGroupSpecs[{group['groupName']}]"
        assert DNS_1123_LABEL.match(group["groupName"]), f"{where}: groupName must be a DNS-1123 label"
        lo, hi = group["minReplicas"], group["maxReplicas"]
        assert isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi, f"{where}: bad replica bounds"
        assert lo <= group.get("replicas", lo) <= hi, f"{where}: replicas outside [minReplicas, maxReplicas]"
        for container in check_group(group, where):
            resources = container.get("resources", {})
            gpus = resources.get("limits", {}).get("nvidia.com/gpu")
            if gpus is not None:
                assert isinstance(gpus, int) and gpus > 0, f"{where}: nvidia.com/gpu must be an integer > 0"
                # Kubernetes rejects extended resources whose request differs from the limit.
                assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus
                gpu_groups += 1
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_rayjob_entrypoint_runs_the_seed_config_against_the_mlflow_service():
    job = _k8s_doc("RayJob")
    entrypoint = job["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's shell line: shell syntax would run in the submitter.
    assert not re.search(r"[;&|<>`$()]", entrypoint), f"entrypoint must be a plain command: {entrypoint!r}"
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", SWEEP_SCRIPT]
    assert _option_value(argv, "--config") == SEED_CONFIG
    uri = _option_value(argv, "--mlflow-uri")
    match = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", uri or "")
    assert match, f"--mlflow-uri must be http://<service>:<port>, got {uri!r}"
    service = _k8s_doc("Service", match.group(1).split(".")[0])
    assert int(match.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    deployment_labels = _k8s_doc("Deployment", service["metadata"]["name"])["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= deployment_labels["labels"].items(), (
        "the MLflow Service does not select the MLflow pods"
    )
    # Same command as the runbook's `ray job submit` (the MLflow address differs by design).
    submitted = _submitted_entrypoint()
    assert submitted[:2] == argv[:2] and _option_value(submitted, "--config") == SEED_CONFIG
    working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    final_stage = Dockerfile.parse(DOCKERFILE).final
    workdirs = [args for keyword, args in final_stage.instructions if keyword == "WORKDIR"]
    assert working_dir == workdirs[-1], "runtime_env working_dir must be the project copy in the image"


def test_rayjob_mlflow_server_is_cluster_internal():
    service = _k8s_doc("Service", "dlrml-mlflow")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "the MLflow Service must not be exposed"
    policy = _k8s_doc("NetworkPolicy")
    pod_labels = _k8s_doc("Deployment", "dlrml-mlflow")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert "Ingress" in policy["spec"]["policyTypes"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    ray_pods = {"ray.io/is-ray-node": "yes"}
    assert sources and all(peer["podSelector"]["matchLabels"] == ray_pods for peer in sources)
    container = _k8s_doc("Deployment", "dlrml-mlflow")["spec"]["template"]["spec"]["containers"][0]
    _, params = _parse_cli(_mlflow_cli(), [*container["command"][1:], *container["args"]])
    assert any(h.startswith("dlrml-mlflow") for h in params["allowed_hosts"].split(","))


def test_images_match_across_manifests_and_project_version():
    version = _pyproject()["project"]["version"]
    docker = _load_yaml(CLUSTER_YAML)["docker"]
    job = _k8s_doc("RayJob")["spec"]["rayClusterSpec"]
    k8s_head = job["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    k8s_workers = {c["image"] for g in job["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]}
    mlflow_pod = _k8s_doc("Deployment", "dlrml-mlflow")["spec"]["template"]["spec"]
    mlflow_image = mlflow_pod["containers"][0]["image"]
    assert docker["head_image"] == k8s_head == mlflow_image
    assert k8s_workers == {docker["worker_image"]}
    repository = docker["head_image"].rsplit(":", 1)[0]
    assert docker["head_image"] == f"{repository}:{version}-cpu", "head: the CPU variant of this version"
    assert docker["worker_image"] == f"{repository}:{version}-gpu", "workers: the GPU variant of this version"


def test_manifests_hold_no_secrets():
    for path in (CLUSTER_YAML, RAYJOB_YAML, DOCKERFILE, RUNBOOK):
        assert not SECRET_LITERAL.search(path.read_text()), f"{path.name} holds what looks like a credential"
    for doc in _k8s_docs():
        pod_specs = [doc.get("spec", {}).get("template", {}).get("spec", {})]
        if doc["kind"] == "RayJob":
            cluster = doc["spec"]["rayClusterSpec"]
            groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
            pod_specs = [g["template"]["spec"] for g in groups]
        for pod in pod_specs:
            for container in pod.get("containers", []):
                for env in container.get("env", []):
                    if SECRET_NAME.search(env["name"]):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], (
                            f"{env['name']} must come from a Kubernetes Secret"
                        )
    docker = _load_yaml(CLUSTER_YAML)["docker"]
    for option in [o for k, v in docker.items() if k.endswith("run_options") for o in v]:
        assert not (option.split()[0] in {"-e", "--env"} and SECRET_NAME.search(option)), option


# ------------------------------------------------------------------------ real MLflow servers (loopback only)


@dataclass
class MlflowServer:
    """A running ``mlflow server`` process bound to 127.0.0.1."""

    process: subprocess.Popen
    port: int
    log: Path

    def status(self, path: str, host_header: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host_header})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


def _start_mlflow(argv: list[str], tmp: Path) -> MlflowServer:
    """Start ``mlflow server <argv>`` with the address, port and stores replaced by loopback/local ones.

    Everything else (workers, host-header allow-list, serve-artifacts) is exactly what the manifest runs.
    """
    port = _free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination": str(tmp / "artifacts"),
    }
    args = list(argv)
    for option, value in local.items():
        assert option in args, f"{option} missing from the MLflow command"
        args[args.index(option) + 1] = value
    log = tmp / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            start_new_session=True,  # its own process group: the fixture stops exactly this server tree
        )
    return MlflowServer(process, port, log)


def _wait_healthy(server: MlflowServer, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            code = server.process.returncode
            pytest.fail(f"mlflow server exited with {code}:\n{server.log.read_text()[-3000:]}")
        try:
            if server.status("/health", "localhost") == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy in time:\n{server.log.read_text()[-3000:]}")


def _stop(server: MlflowServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=15)


@pytest.fixture(scope="module")
def mlflow_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, MlflowServer]]:
    """The head-node MLflow command and the Kubernetes MLflow container, both really running (in parallel)."""
    container = _k8s_doc("Deployment", "dlrml-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    commands = {"ray-up": _cluster_mlflow_command()[1], "kuberay": container["args"]}
    servers = {name: _start_mlflow(argv, tmp_path_factory.mktemp(name)) for name, argv in commands.items()}
    try:
        deadline = time.monotonic() + 240
        for server in servers.values():
            _wait_healthy(server, deadline)
        yield servers
    finally:
        for server in servers.values():
            _stop(server)


def test_head_mlflow_server_admits_workers_by_private_ip(mlflow_servers):
    server = mlflow_servers["ray-up"]
    # GPU workers call http://<head private IP>:5000; the SSH tunnel arrives as localhost.
    assert server.status(MLFLOW_API, "10.0.12.34:5000") == 200
    assert server.status(MLFLOW_API, "localhost:5000") == 200
    assert server.status(MLFLOW_API, "attacker.example:5000") == 403, "DNS-rebinding protection must stay on"


def test_kuberay_mlflow_server_admits_the_service_name(mlflow_servers):
    server = mlflow_servers["kuberay"]
    assert server.status(MLFLOW_API, "dlrml-mlflow:5000") == 200
    assert server.status(MLFLOW_API, "dlrml-mlflow.default.svc.cluster.local:5000") == 200
    assert server.status(MLFLOW_API, "localhost:5000") == 200, "kubectl port-forward must reach the UI"
    assert server.status(MLFLOW_API, "attacker.example:5000") == 403, "DNS-rebinding protection must stay on"


# ------------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_images_match_pinned_ray_and_python():
    dockerfile = Dockerfile.parse(DOCKERFILE)
    ray_spec = _project_requirements()["ray"].specifier
    aliases = {s.alias for s in dockerfile.stages}
    variants = set()
    for stage in dockerfile.stages:
        base = _expand(stage.base, dockerfile.global_args)
        if not base.startswith("rayproject/"):
            continue
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|cu\d{3})", base)
        assert match, f"{base} is not a rayproject/ray:<version>-py<XY>-<cpu|cuXYZ> image"
        assert match.group(1) in ray_spec, f"{base}: Ray {match.group(1)} is not the pinned {ray_spec}"
        assert f"{match.group(2)}.{match.group(3)}" == "3.11", f"{base}: the project targets Python 3.11"
        variants.add("cpu" if match.group(4) == "cpu" else "gpu")
    assert variants == {"cpu", "gpu"}, f"need a CPU and a CUDA Ray base image, found {variants}"
    for variant in ("gpu", "cpu"):
        final = _expand(dockerfile.final.base, {**dockerfile.global_args, "VARIANT": variant})
        assert final in aliases, f"VARIANT={variant} selects {final!r}, which is no stage"
    ray_arg = dockerfile.global_args["RAY_VERSION"]
    assert _k8s_doc("RayJob")["spec"]["rayClusterSpec"]["rayVersion"] == ray_arg


def test_dockerfile_installs_the_pyproject_dependency_set():
    dockerfile = Dockerfile.parse(DOCKERFILE)
    stage = dockerfile.final
    project = _project_requirements()
    installs = _pip_installs(stage, dockerfile.stage_args(stage))
    assert installs, "the Dockerfile installs nothing with pip"

    project_installs = [i for i in installs if any(_is_project_target(r) for r in i.requirements)]
    full = [i for i in project_installs if "--no-deps" not in i.options]
    assert full, "no `pip install .` that resolves the project's dependencies from pyproject.toml"
    copied = []
    for keyword, args in stage.instructions[: full[0].instruction_index]:
        if keyword in {"COPY", "ADD"}:
            copied += [w for w in shlex.split(args) if not w.startswith("--")][:-1]
    readme = _pyproject()["project"].get("readme")
    for needed in ["pyproject.toml", *([readme] if isinstance(readme, str) else [])]:
        assert needed in copied or "." in copied, f"{needed} is not copied before `pip install .`"

    for install in installs:
        assert not {"-r", "--requirement", "-c", "--constraint"} & set(install.options), (
            "a requirements/constraints file would be a second, unchecked dependency list"
        )
        for text in install.requirements:
            if _is_project_target(text):
                continue
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name in project:
                assert requirement.specifier == project[name].specifier, (
                    f"Dockerfile installs {text!r} but pyproject.toml pins {project[name]}"
                )
            else:
                assert requirement.specifier != SpecifierSet(), f"{text!r} is installed without a version"

    by_name = {
        canonicalize_name(Requirement(text).name): install
        for install in installs
        for text in install.requirements
        if not _is_project_target(text)
    }
    torch_install, deepspeed_install = by_name["torch"], by_name["deepspeed"]
    assert torch_install.instruction_index < deepspeed_install.instruction_index, "torch before deepspeed"
    assert "--no-build-isolation" in deepspeed_install.options, "deepspeed must build against installed torch"
    assert "--index-url" in torch_install.options, "torch must come from the PyTorch index of the variant"
    assert torch_install.instruction_index < full[0].instruction_index, "torch before the project resolve"


def test_dockerfile_installs_the_vllm_extra_only_when_asked_and_only_on_gpu():
    dockerfile = Dockerfile.parse(DOCKERFILE)
    stage = dockerfile.final
    args = dockerfile.stage_args(stage)
    assert args["INSTALL_VLLM"] == "0", "vLLM is opt-in: it pins its own CUDA torch"
    installs = [i for i in _pip_installs(stage, args) if ".[vllm]" in i.requirements]
    assert len(installs) == 1, "the vllm extra is installed by exactly one `pip install '.[vllm]'`"
    keyword, run = stage.instructions[installs[0].instruction_index]
    assert keyword == "RUN" and '"$INSTALL_VLLM" = "1"' in run and '"$VARIANT" != "gpu"' in run
    checks = [i for i, (kw, text) in enumerate(stage.instructions) if kw == "RUN" and "torch.version.cuda" in text]
    assert checks and installs[0].instruction_index < checks[-1], "the CUDA-torch check must run after vLLM's install"
    extra = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["vllm"]]
    assert [canonicalize_name(r.name) for r in extra] == ["vllm"] and extra[0].specifier == SpecifierSet(">=0.11")
    assert "vllm" not in _project_requirements(), "vLLM must never be a core (CPU) dependency"


def test_dockerfile_runs_as_non_root_without_secrets():
    dockerfile = Dockerfile.parse(DOCKERFILE)
    users = [args for keyword, args in dockerfile.final.instructions if keyword == "USER"]
    assert users, "the final stage sets no USER (it would inherit whatever the base image uses)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the image runs as {users[-1]}"
    declared = dict(dockerfile.global_args)
    for stage in dockerfile.stages:
        for keyword, args in stage.instructions:
            if keyword == "ARG":
                name, default = _arg_default(args)
                declared[name] = default or ""
            elif keyword == "ENV":
                words = shlex.split(args)
                if "=" in words[0]:
                    declared.update(dict(w.split("=", 1) for w in words))
                else:
                    declared[words[0]] = " ".join(words[1:])
    leaks = sorted(name for name in declared if SECRET_NAME.search(name))
    assert not leaks, f"credential-like ARG/ENV in the image (build args end up in its history): {leaks}"


def test_docker_build_context_has_the_sources_and_nothing_local():
    dockerfile = Dockerfile.parse(DOCKERFILE)
    sources = []
    for keyword, args in dockerfile.final.instructions:
        if keyword in {"COPY", "ADD"} and "--from" not in args:
            sources += [w for w in shlex.split(args) if not w.startswith("--")][:-1]
    packages = [p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    for package in packages:
        assert package in sources, f"package {package}/ is not copied into the image"
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY source {source} does not exist in the repository"
        assert not _dockerignored(source), f"COPY source {source} is excluded by .dockerignore"
    local_state = [
        ".git",
        "venv",
        ".venv",
        "mlruns",
        "mlflow.db",
        "ray_results",
        "sweep_results",
        "a/__pycache__",
    ]
    for local in local_state:
        assert _dockerignored(local), f"{local} would be sent to the Docker daemon"


# ---------------------------------------------------------------------------------------------------- runbook


def test_runbook_ray_commands_parse_with_ray_cli():
    invocations = _runbook_ray_invocations()
    paths = [tuple(_parse_cli(_ray_cli(), argv)[0]) for argv in invocations]
    for wanted in [("up",), ("down",), ("dashboard",), ("job", "submit"), ("job", "logs")]:
        assert wanted in paths, f"the runbook never runs `ray {' '.join(wanted)}`"
    for argv in invocations:
        for token in argv:
            if token.endswith((".yaml", ".yml")):
                assert (REPO_ROOT / token).is_file(), f"runbook refers to missing {token}"


def test_runbook_paths_exist():
    text = RUNBOOK.read_text()
    for path in sorted(
        set(re.findall(r"(?<![\w/])((?:cluster|docker|sweep|trainers|evaluation|tests)/[\w./-]*\w)", text))
    ):
        if "<" in path:
            continue
        assert (REPO_ROOT / path).exists(), f"runbook refers to missing {path}"


def test_runbook_entrypoints_exist():
    text = "\n".join(_runbook_commands())
    scripts = re.findall(r"\bpython3?\s+([\w./-]+\.py)\b", text)
    modules = re.findall(r"\bpython3?\s+-m\s+([\w.]+)", text)
    configs = re.findall(r"--config[ =]([\w.-]+)", text)
    assert SWEEP_SCRIPT in scripts and SEED_CONFIG in configs, "the runbook does not submit the seed sweep"
    for script in scripts:
        assert (REPO_ROOT / script).is_file(), f"runbook entrypoint {script} does not exist"
    for module in modules:
        module_path = REPO_ROOT / Path(*module.split("."))
        assert module_path.with_suffix(".py").is_file() or (module_path / "__main__.py").is_file(), (
            f"runbook module {module} does not exist"
        )
    for config in configs:
        config_path = REPO_ROOT / "sweep" / "configs" / f"{config}.yaml"
        assert config_path.is_file(), f"sweep config {config_path.relative_to(REPO_ROOT)} is missing"


def test_submitted_entrypoint_accepts_its_flags():
    argv = _submitted_entrypoint()
    assert argv[0] == "python" and argv[1] == SWEEP_SCRIPT
    assert (REPO_ROOT / SWEEP_SCRIPT).is_file(), f"{SWEEP_SCRIPT} does not exist"
    result = subprocess.run(
        [sys.executable, SWEEP_SCRIPT, "--help"],
        cwd=REPO_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in [t for t in argv[2:] if t.startswith("--")]:
        assert flag.split("=")[0] in result.stdout, f"{SWEEP_SCRIPT} --help does not list {flag}"


# ------------------------------------------------------------------------------------------ DeepSpeed configs


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=[p.name for p in DEEPSPEED_CONFIGS])
def test_deepspeed_config_is_accepted_after_hf_fills_auto(path: Path, tmp_path: Path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import MistralConfig, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    raw = json.loads(path.read_text())
    stage = int(re.search(r"zero(\d)", path.name).group(1))
    assert raw["zero_optimization"]["stage"] == stage, f"{path.name} is not ZeRO stage {stage}"
    hf_config = HfTrainerDeepSpeedConfig(copy.deepcopy(raw))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_grad_norm=1.0,
        report_to=[],
    )
    hf_config.trainer_config_process(args)
    # Mistral-7B's width sizes ZeRO's buckets ("auto" keys that depend on the model).
    model = types.SimpleNamespace(config=MistralConfig())
    assert model.config.hidden_size == MISTRAL_7B_HIDDEN_SIZE
    hf_config.trainer_config_finalize(args, model, num_training_steps=100)
    filled = hf_config.config
    assert "auto" not in json.dumps(filled), f"{path.name}: transformers left 'auto' values unfilled"
    assert filled["bf16"]["enabled"] is True and filled["train_micro_batch_size_per_gpu"] == 2
    parsed = DeepSpeedConfig(filled)  # DeepSpeed's own (strict, extra-field-rejecting) config model
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_batch_size == 2 * 4 * args.world_size


# ------------------------------------------------------------------------------------- shared storage, concurrency


def _seed_config():
    from sweep.config import load_sweep_config

    return load_sweep_config(SEED_CONFIG)


def _mount_point(storage_path: str, mounts: list[str]) -> str:
    """The mount (of ``mounts``) that holds ``storage_path``; fails if none does."""
    holding = [m for m in mounts if storage_path == m or storage_path.startswith(m.rstrip("/") + "/")]
    assert holding, f"storage_path {storage_path} is on no shared mount ({mounts})"
    return holding[0]


def test_ray_up_mounts_the_seed_storage_path_on_every_node():
    """The seed sweep's storage_path is in a volume every container gets, NFS-mounted on every node type's host."""
    config = _load_yaml(CLUSTER_YAML)
    binds = [opt.split()[1].split(":") for opt in config["docker"]["run_options"] if opt.startswith("-v ")]
    mount = _mount_point(_seed_config().storage_path, [container for _, container in binds])
    host = next(host for host, container in binds if container == mount)
    for name, node_type in config["available_node_types"].items():
        commands = node_type.get("initialization_commands", config["initialization_commands"])
        nfs = [c for c in commands if "mount -t nfs4" in c]
        assert nfs, f"{name}: no NFS mount in its initialization_commands"
        words = shlex.split(nfs[0].split("mount -t nfs4", 1)[1].split(")")[0])
        assert words[-1] == host, f"{name}: mounts {words[-1]}, the containers bind {host}"


def test_kuberay_mounts_one_read_write_many_claim_at_the_storage_path_on_every_pod():
    cluster = _k8s_doc("RayJob")["spec"]["rayClusterSpec"]
    groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    storage = _seed_config().storage_path
    claims = set()
    for name, group in groups.items():
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        mount = _mount_point(storage, list(mounts))
        claim = volumes[mounts[mount]].get("persistentVolumeClaim", {}).get("claimName")
        assert claim, f"{name}: {mount} is not a PersistentVolumeClaim"
        claims.add(claim)
    assert len(claims) == 1, f"head and workers mount different claims: {claims}"
    pvc = _k8s_doc("PersistentVolumeClaim", claims.pop())
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_seed_concurrency_matches_the_gpu_nodes_both_cluster_files_allow():
    """One STRICT_PACK trial per 8-GPU node: max_concurrent_trials is exactly the number of GPU nodes."""
    resources = _seed_config().resources
    assert resources.placement_strategy == "STRICT_PACK"
    per_trial = resources.per_trial()["GPU"]
    config = _load_yaml(CLUSTER_YAML)
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert all(t["resources"]["GPU"] >= per_trial for t in workers), "a trial does not fit on one node"
    ray_up_nodes = min(config["max_workers"], sum(t["max_workers"] for t in workers))
    kuberay_nodes = 0
    for group in _k8s_doc("RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        kuberay_nodes += group["maxReplicas"] * (gpus // per_trial)
    assert ray_up_nodes == kuberay_nodes == resources.max_concurrent_trials
    # Autoscaled nodes boot and pull the image before a trial's placement group can be placed.
    assert resources.autoscale and resources.placement_timeout_s >= 600
