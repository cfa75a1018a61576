"""The cluster-launcher files, checked against the installed Ray's autoscaler schema and validator.

``ray_cluster.yaml`` (AWS, GPU workers) and ``ray_cluster.local.yaml`` (on-prem ``local`` provider).
Three layers: the JSON schema shipped with Ray (``ray/autoscaler/ray-schema.json``; unknown keys
are rejected), Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before it
talks to a cloud; for the ``local`` provider the whole ``_bootstrap_config``, which needs no
network), and what this project needs from the files (the project installed from its pinned
pyproject, the dashboard on the head, a GPU worker type).

The AWS provider's own bootstrap (``bootstrap_aws``) is not run: it needs boto3, which is not a
project dependency, and AWS credentials, since it looks up subnets, security groups and IAM roles.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "ray_cluster.yaml"
LOCAL = ROOT / "ray_cluster.local.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=lambda p: p.name)
def test_valid_under_the_installed_rays_schema_and_validator(path):
    config = load(path)
    jsonschema.validate(config, SCHEMA)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_local_variant_passes_rays_whole_bootstrap():
    from ray.autoscaler._private.commands import _bootstrap_config

    resolved = _bootstrap_config(copy.deepcopy(load(LOCAL)), no_config_cache=True)
    nodes = resolved["available_node_types"]["local.cluster.node"]
    workers = load(LOCAL)["provider"]["worker_ips"]
    assert nodes["min_workers"] == nodes["max_workers"] == len(workers)


@pytest.mark.parametrize("mutate, where", [
    (lambda c: c.update(bogus_field=1), "top level"),
    (lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1), "node type"),
    (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "resource value"),
    (lambda c: c["auth"].update(ssh_password="x"), "auth"),
])
def test_schema_check_can_fail(mutate, where):
    config = load(AWS)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)


def test_rays_validator_catches_what_the_schema_cannot():
    config = load(AWS)
    config["head_node_type"] = "no_such_type"
    jsonschema.validate(config, SCHEMA)
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(copy.deepcopy(config)))


def test_aws_file_has_gpu_workers_and_a_dashboard_head():
    config = load(AWS)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    gpu = [name for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and config["head_node_type"] not in gpu
    for name in gpu:
        assert re.match(r"(g\d|p\d)", types[name]["node_config"]["InstanceType"]), name
        assert types[name].get("max_workers", 0) >= 1
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--include-dashboard=true" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=lambda p: p.name)
def test_nodes_install_this_project_as_pinned(path):
    config = load(path)
    mounts = config["file_mounts"]
    project = next(remote for remote, local in mounts.items() if local == ".")
    assert (ROOT / "pyproject.toml").is_file()  # "." is the repository root `ray up` runs in
    setup = config["setup_commands"]
    assert any(re.search(rf"pip install .*-e {re.escape(project)}\b", cmd) for cmd in setup), setup
    # the venv is Python 3.11, as pyproject requires, and both start commands use its ray
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11,<3.12"
    assert any("python3.11 -m venv ~/gatelens-venv" in cmd for cmd in setup)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("~/gatelens-venv/bin/ray start" in c for c in starts), key
        assert all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "~/.ray/auth_token" in mounts  # token auth needs the token on every node
    # the launching machine must run the cluster's Ray: the pin is the installed version
    pins = dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(.+)", d).groups()
                for d in pyproject["project"]["dependencies"])
    assert pins["ray"] == ray.__version__
