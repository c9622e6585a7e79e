"""The cluster templates: each parses, has the fields its tool requires, and the study commands it holds run (with
--dry-run) against this checkout."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "cluster" / "templates"


def dry_run(command: str, tmp_path: Path, script: str = "") -> subprocess.CompletedProcess:
    """Run a template's `arscale ...` command (after `script`, in bash) with --dry-run added."""
    assert command.startswith("arscale "), command
    body = f'arscale() {{ "{sys.executable}" -m pipelines.cli "$@" --dry-run; }}\n{script}\n{command}\n'
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "CONFIG": "text-tiny", "STORAGE": str(tmp_path / "studies"), "RAY_ADDRESS": "10.0.0.1:6379"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run (pending)" in result.stdout and "train-transformer-" in result.stdout
    assert not (tmp_path / "studies").exists()  # a dry run writes nothing
    return result


def commented_commands(path: Path) -> list[str]:
    """The `$ arscale ...` lines of a template's header comment."""
    return re.findall(r"^#\s+\$ (arscale .*?)\s*(?:#.*)?$", path.read_text(), re.M)


def test_the_readme_lists_every_template():
    readme = (TEMPLATES / "README.md").read_text()
    for template in TEMPLATES.iterdir():
        if template.name != "README.md":
            assert f"`{template.name}`" in readme


def test_ray_cluster_launcher_config_passes_rays_schema(tmp_path):
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((TEMPLATES / "ray-cluster-aws.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws" and config["head_node_type"] in config["available_node_types"]
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in config[commands])
    assert "~/.ray/auth_token" in config["file_mounts"]  # every node gets the token
    [command] = commented_commands(TEMPLATES / "ray-cluster-aws.yaml")
    assert "arscale submit" in command and "--address http://127.0.0.1:8265" in command
    dry_run(command, tmp_path)


def _kuberay_cluster_spec(spec: dict) -> None:
    """The fields KubeRay needs to make a cluster with token authentication and shared study storage."""
    assert re.fullmatch(r"2\.\d+\.\d+", spec["rayVersion"]) and spec["authOptions"] == {"mode": "token"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert all("rayStartParams" in g and g["template"]["spec"]["containers"] for g in groups)
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        assert container["image"] and container["resources"]["limits"]["cpu"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in group["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert claims == {"arscale-studies"} and mounts == {"/mnt/studies"}


def test_kuberay_raycluster(tmp_path):
    manifest = yaml.safe_load((TEMPLATES / "kuberay-raycluster.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    _kuberay_cluster_spec(manifest["spec"])
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["containerPort"] for p in head["ports"]}
    assert {6379, 8265} <= ports
    commands = commented_commands(TEMPLATES / "kuberay-raycluster.yaml")
    assert commands and all("--address http://127.0.0.1:8265" in c for c in commands)
    for command in commands:
        dry_run(command, tmp_path)


def test_kuberay_rayjob_runs_a_study(tmp_path):
    manifest = yaml.safe_load((TEMPLATES / "kuberay-rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    _kuberay_cluster_spec(spec["rayClusterSpec"])
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[:3] == ["arscale", "study", "run"] and entrypoint[entrypoint.index("--out") + 1].startswith(
        "/mnt/studies/")
    out = tmp_path / "mnt-studies"
    dry_run(spec["entrypoint"].replace("/mnt/studies", str(out)), tmp_path)
    assert not out.exists()


def test_slurm_script_starts_ray_across_the_allocation_and_runs_a_study(tmp_path):
    script = (TEMPLATES / "slurm-study.sbatch").read_text()
    subprocess.run(["bash", "-n", TEMPLATES / "slurm-study.sbatch"], check=True)
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.M))
    assert int(directives["nodes"]) >= 2 and directives["ntasks-per-node"] == "1"
    assert "cpus-per-task" in directives and "time" in directives
    assert "export RAY_AUTH_MODE=token" in script and "export RAY_AUTH_TOKEN" in script
    joined = script.replace("\\\n", " ")  # continued lines as one
    assert re.search(r"srun .*-w \"\$\{nodes\[0\]\}\" ray start --head .*--block &", joined)
    assert re.search(r"srun .*-w \"\$node\" ray start --address=\"\$RAY_ADDRESS\" .*--block &", joined)
    study_lines = [line for line in script.splitlines() if line.startswith(("study=", "arscale "))]
    assert len(study_lines) == 2
    dry_run(study_lines[1], tmp_path, script=study_lines[0])
