"""The cluster templates: each parses, has the fields its tool requires, and the study commands it holds run (with
--dry-run) against this checkout. The GPU variants (a gpu worker group, --gres, GPU instance types, the CUDA image)
and the GPU preset they run are checked the same way. Preemption: each gives a stopped study the time to save its
checkpoints (STEP_STOP_GRACE_S of pipelines.step_status) and retries or requeues it; the pieces that pass the
signal on (the SLURM scripts' trap, the KubeRay head's preStop hook, cluster/drain.py) run here on real processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cluster import drain
from pipelines.step_status import STEP_STOP_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "cluster" / "templates"
# How long a stopped study may take: its steps' checkpoint grace, then the driver's own stopping.
STOP_S = STEP_STOP_GRACE_S + 30
# A study driver for the tests of the preemption pieces: it says when it has started and when SIGTERM came, takes
# half a second to "save its checkpoints" and exits with 3.
FAKE_DRIVER = """#!{python}
import os, signal, sys, time
log = open(os.environ["DRIVER_LOG"], "a", buffering=1)
def stop(signum, frame):
    log.write("TERM\\n")
    time.sleep(0.5)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
log.write("started " + " ".join(sys.argv[1:3]) + "\\n")
time.sleep(60)
"""


def dry_run(command: str, tmp_path: Path, script: str = "", config: str = "text-tiny") -> subprocess.CompletedProcess:
    """Run a template's `arscale ...` command (after `script`, in bash, with $CONFIG = `config`) with --dry-run
    added."""
    assert command.startswith("arscale "), command
    body = f'arscale() {{ "{sys.executable}" -m pipelines.cli "$@" --dry-run; }}\n{script}\n{command}\n'
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "CONFIG": config, "STORAGE": str(tmp_path / "studies"), "RAY_ADDRESS": "10.0.0.1:6379"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run (pending)" in result.stdout and "train-transformer-" in result.stdout
    assert not (tmp_path / "studies").exists()  # a dry run writes nothing
    return result


def gpu_dry_run(command: str, tmp_path: Path, script: str = "") -> None:
    """A template's command that runs the GPU preset: its dry run plans the whole grid, 11M to 302M."""
    result = dry_run(command, tmp_path, script, config="text-gpu")
    assert "train-transformer-10.6M" in result.stdout and "train-transformer-302M" in result.stdout


def commented_commands(path: Path) -> list[str]:
    """The `$ arscale ...` lines of a template's header comment."""
    return re.findall(r"^#[ \t]+\$ (arscale .*?)[ \t]*(?:#.*)?$", path.read_text(), re.M)  # one line each


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
    commands = commented_commands(TEMPLATES / "ray-cluster-aws.yaml")
    assert len(commands) == 2
    for command in commands:
        assert "arscale submit" in command and "--address http://127.0.0.1:8265" in command
        dry_run(command, tmp_path)
    assert any("text-gpu" in c for c in commands)


def test_ray_cluster_launcher_has_cpu_workers_and_gpu_workers_with_the_cuda_build():
    config = yaml.safe_load((TEMPLATES / "ray-cluster-aws.yaml").read_text())
    types = config["available_node_types"]
    [gpu] = [t for name, t in types.items() if t["resources"].get("GPU")]
    cpu = [t for name, t in types.items() if name != config["head_node_type"] and not t["resources"].get("GPU")]
    assert cpu and all(t["min_workers"] >= 1 for t in cpu)  # the CPU workers are as before
    # a GPU instance family, its GPUs declared to Ray, up when a study plans `device: auto` against the cluster
    assert re.match(r"(g5|g6|g6e|p4d|p4de|p5|p5e|p5en)\.", gpu["node_config"]["InstanceType"])
    assert gpu["resources"]["GPU"] >= 1 and 1 <= gpu["min_workers"] <= gpu["max_workers"]
    # its own setup: the same steps as the others', with torch's CUDA build instead of the CPU one
    setup = gpu["worker_setup_commands"]
    assert setup[:2] == config["setup_commands"][:2]  # apt, the EFS mount
    assert re.search(r"pip install -q torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cu\d+ "
                     r"&& \.venv/bin/pip install -q -c constraints\.txt -e \.", setup[-1])
    assert "whl/cpu" in config["setup_commands"][-1]  # the head and CPU workers keep the CPU build
    assert config["max_workers"] >= sum(t["min_workers"] for t in types.values() if "min_workers" in t)


def _kuberay_cluster_spec(spec: dict) -> None:
    """The fields KubeRay needs to make a cluster with token authentication and shared study storage; a GPU group
    (one whose pods ask for nvidia.com/gpu) also gets the CUDA image, its GPUs declared to Ray, a toleration of
    the GPU nodes' taint and a larger /dev/shm for NCCL."""
    assert re.fullmatch(r"2\.\d+\.\d+", spec["rayVersion"]) and spec["authOptions"] == {"mode": "token"}
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert all("rayStartParams" in g and g["template"]["spec"]["containers"] for g in groups)
    # Preemption: a deleted or evicted pod is killed only after its grace period; by then the head's preStop hook has
    # stopped the studies there (their steps saving checkpoints) and waited for them.
    assert all(g["template"]["spec"]["terminationGracePeriodSeconds"] >= STOP_S for g in groups)
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["python", "-m", "cluster.drain"]
    assert STOP_S <= drain.WAIT_S < head["terminationGracePeriodSeconds"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        limits = container["resources"]["limits"]
        assert container["image"] and limits["cpu"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
        assert claims == {"arscale-studies"} and volumes[mounts["/mnt/studies"]]["persistentVolumeClaim"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if not gpus:
            assert set(mounts) == {"/mnt/studies"} and not container["image"].endswith(":cuda")
            continue
        assert group is not spec["headGroupSpec"]  # the head plans and drives; training runs on the workers
        assert container["image"].endswith(":cuda")  # built from Dockerfile.cuda
        assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert int(group["rayStartParams"]["num-gpus"]) == gpus
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert set(mounts) == {"/mnt/studies", "/dev/shm"}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert group["minReplicas"] >= 1  # GPUs are there when a study plans `device: auto` against the cluster


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))]


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
    # a CPU group and a GPU group, side by side; the GPU preset is one of the commands
    groups = {g["groupName"] for g in manifest["spec"]["workerGroupSpecs"]}
    [gpu] = _gpu_groups(manifest["spec"])
    assert groups - {gpu["groupName"]} and gpu["maxReplicas"] > gpu["minReplicas"]
    [gpu_command] = [c for c in commands if "text-gpu" in c]
    gpu_dry_run(gpu_command, tmp_path)


def test_kuberay_rayjob_runs_a_study(tmp_path):
    manifest = yaml.safe_load((TEMPLATES / "kuberay-rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1  # a study stopped by preemption is retried on a new cluster, and resumes
    _kuberay_cluster_spec(spec["rayClusterSpec"])
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[:3] == ["arscale", "study", "run"] and entrypoint[entrypoint.index("--out") + 1].startswith(
        "/mnt/studies/")
    out = tmp_path / "mnt-studies"
    dry_run(spec["entrypoint"].replace("/mnt/studies", str(out)), tmp_path)
    assert not out.exists()


def test_kuberay_rayjob_runs_the_gpu_preset_on_a_gpu(tmp_path):
    manifest = yaml.safe_load((TEMPLATES / "kuberay-rayjob-gpu.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1
    _kuberay_cluster_spec(spec["rayClusterSpec"])
    [gpu] = _gpu_groups(spec["rayClusterSpec"])
    assert gpu is spec["rayClusterSpec"]["workerGroupSpecs"][0] and gpu["replicas"] >= 1
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[:4] == ["arscale", "study", "run", "text-gpu"]
    assert entrypoint[entrypoint.index("--out") + 1] == "/mnt/studies/text-gpu"
    out = tmp_path / "mnt-studies"
    gpu_dry_run(spec["entrypoint"].replace("/mnt/studies", str(out)), tmp_path)
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
    assert len(study_lines) == 2 and study_lines[1].endswith(" &")  # in the background: see _slurm_preemption
    dry_run(study_lines[1].removesuffix(" &"), tmp_path, script=study_lines[0])
    _slurm_preemption(script, directives)


def _slurm_preemption(script: str, directives: dict) -> None:
    """SIGTERM to the batch script ahead of the time limit, with room for the study to stop; requeued when
    preempted (the log appended to, not overwritten)."""
    mode, _, ahead = directives["signal"].partition("@")
    assert mode == "B:TERM" and int(ahead) >= STOP_S
    assert re.search(r"^#SBATCH --requeue$", script, re.M) and directives["open-mode"] == "append"


def test_slurm_gpu_script_declares_each_nodes_gpus_to_ray_and_runs_the_gpu_preset(tmp_path):
    path = TEMPLATES / "slurm-study-gpu.sbatch"
    script = path.read_text()
    subprocess.run(["bash", "-n", path], check=True)
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", script, re.M))
    assert int(directives["nodes"]) >= 2 and directives["ntasks-per-node"] == "1"
    assert re.fullmatch(r"gpu:\d+", directives["gres"]) and "cpus-per-task" in directives and "time" in directives
    assert "export RAY_AUTH_MODE=token" in script and "export RAY_AUTH_TOKEN" in script
    assert re.search(r"^GPUS_PER_NODE=\$\{SLURM_GPUS_ON_NODE:-\d+\}", script, re.M)
    assert re.search(r"^CONFIG=\$\{CONFIG:-text-gpu\}", script, re.M)
    joined = script.replace("\\\n", " ")  # continued lines as one
    gres = r'--gres=gpu:"\$GPUS_PER_NODE"'
    head = re.search(rf'srun .*{gres} -w "\$\{{nodes\[0\]\}}" ray start --head (.*)--block &', joined)
    worker = re.search(rf'srun .*{gres} -w "\$node" ray start --address="\$RAY_ADDRESS" (.*)--block &', joined)
    assert head and worker
    assert all('--num-gpus="$GPUS_PER_NODE"' in m.group(1) for m in (head, worker))
    study_lines = [line for line in script.splitlines() if line.startswith(("study=", "arscale "))]
    assert len(study_lines) == 2 and study_lines[1].endswith(" &")
    gpu_dry_run(study_lines[1].removesuffix(" &"), tmp_path, script=study_lines[0])  # $CONFIG: the default, text-gpu
    _slurm_preemption(script, directives)


def _fake_driver(tmp_path: Path) -> tuple[Path, Path]:
    """FAKE_DRIVER as an `arscale` command in tmp_path/bin; returns (the command, its log)."""
    command = tmp_path / "bin" / "arscale"
    command.parent.mkdir()
    command.write_text(FAKE_DRIVER.format(python=sys.executable))
    command.chmod(0o755)
    return command, tmp_path / "driver.log"


def _wait_for_line(log: Path, line: str) -> None:
    deadline = time.monotonic() + 60
    while line not in (log.read_text().splitlines() if log.exists() else []):
        assert time.monotonic() < deadline, f"no {line!r} in {log}"
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["slurm-study.sbatch", "slurm-study-gpu.sbatch"])
def test_slurm_scripts_pass_sigterm_to_the_study_once_and_exit_with_its_status(tmp_path, name):
    """The script's end (from the study's driver on) with a stand-in driver: SIGTERM to the script (what
    --signal=B:TERM sends) reaches the driver once, and the script waits for it to finish stopping."""
    lines = (TEMPLATES / name).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arscale "))
    command, log = _fake_driver(tmp_path)
    env = {**os.environ, "PATH": f"{command.parent}:{os.environ['PATH']}", "DRIVER_LOG": str(log),
           "CONFIG": "text-tiny", "STORAGE": str(tmp_path), "RAY_ADDRESS": "10.0.0.1:6379"}
    path = tmp_path / name  # a file, as sbatch runs it (bash runs the last command of a `-c` string in its place)
    path.write_text("\n".join(["set -euo pipefail", "study=x", *lines[start:]]) + "\n")
    script = subprocess.Popen(["bash", path], env=env)
    try:
        _wait_for_line(log, "started study run")
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 3  # the study's own exit status
        assert log.read_text().splitlines() == ["started study run", "TERM"]
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()


def test_the_drain_hook_stops_study_drivers_and_waits_for_them(tmp_path):
    """cluster/drain.py on real processes: a study driver (stopped, waited for), the shell Ray runs a job's
    entrypoint in and an unrelated process (both left alone). The processes are given: run bare, it would stop
    every study on this machine."""
    command, log = _fake_driver(tmp_path)
    env = {**os.environ, "DRIVER_LOG": str(log)}
    driver = subprocess.Popen([command, "study", "run", "text-tiny"], env=env)
    shell = subprocess.Popen(["sh", "-c", "sleep 60; arscale study run text-tiny"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        _wait_for_line(log, "started study run")
        said = []
        assert drain.drain([psutil.Process(p.pid) for p in (driver, shell, other)], wait_s=30, log=said.append) == 0
        # ended (drain reaped it, so its exit status is not Popen's to see) after its SIGTERM handler ran
        assert driver.poll() is not None and log.read_text().splitlines() == ["started study run", "TERM"]
        assert shell.poll() is None and other.poll() is None
        assert said == ["stopped 1 of 1 studies"]
    finally:
        for p in (driver, shell, other):
            p.kill()
            p.wait()
    assert drain.is_study_driver([sys.executable, "-m", "pipelines.cli", "study", "run", "x.yaml"])
    assert not drain.is_study_driver([sys.executable, "-m", "pipelines.cli", "study", "status", "x"])


def _dockerfile(name: str) -> tuple[str, list[str]]:
    """A Dockerfile's text and its instructions (continued lines joined)."""
    text = (TEMPLATES / name).read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return text, lines


def test_the_images_install_the_project_and_the_cuda_one_torchs_cuda_build_first():
    cpu_text, cpu = _dockerfile("Dockerfile")
    cuda_text, cuda = _dockerfile("Dockerfile.cuda")
    for lines in (cpu, cuda):
        copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
        assert {"armodels", "scaling", "pipelines", "cluster", "configs"} <= copied
    # the CUDA image: an NVIDIA CUDA runtime base; torch from PyTorch's CUDA index, then arscale with the pins
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", cuda_text, re.M))
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])
    assert "FROM ${CUDA_IMAGE}" in cuda
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX"])
    [install] = [line for line in cuda if "pip install torch==" in line]
    assert install.index("--index-url ${TORCH_INDEX}") < install.index("pip install -c constraints.txt -e .")
    assert "torch.version.cuda" in install  # the build fails if the CUDA build was not what got installed
    # the same torch and the same Python as the CPU image: Ray needs one Python across a cluster mixing the two
    assert f"torch=={args['TORCH_VERSION']} " in cpu_text
    assert re.search(r"^FROM python:(\d+\.\d+)-slim", cpu_text, re.M).group(1) == args["PYTHON"].removeprefix(
        "python")


def test_the_gpu_preset_plans_its_grid_for_about_an_hour_on_one_gpu():
    """configs/text-gpu.yaml, planned against one GPU: 11M-302M parameters on the GPU, the four small runs on a
    quarter of it, the two large on all of it, compiled, bf16 where the GPU has it; its training FLOPs make about
    34 minutes at 40% MFU of an H100's bf16 peak (what its header says), and its token budgets stay within its
    stated ~19 epochs of the stdlib corpus."""
    from pipelines.config import load_config
    from pipelines.plan import train_configs

    cfg, _ = load_config("text-gpu")
    assert cfg.corpus.source == "python-stdlib" and cfg.training.device == "auto"
    runs = train_configs(cfg, gpus=1)
    params = sorted(tc.run(Path(".")).costs().params_nonembedding for tc in runs)
    assert 8e6 <= params[0] <= 15e6 and 250e6 <= params[-1] <= 350e6 and len(runs) >= 5
    for tc in runs:
        n = tc.run(Path(".")).costs().params_nonembedding
        assert tc.train.device == "cuda" and tc.train.compile and tc.train.precision == "auto"
        assert tc.num_workers == 1 and tc.gpus_per_worker == (0.25 if n < 100e6 else 1.0), tc.name
    flops = sum(tc.run(Path(".")).flops("per_layer") for tc in runs)
    minutes = flops / (0.40 * 989e12) / 60
    assert 25 <= minutes <= 50, minutes
    assert max(tc.run(Path(".")).tokens_seen for tc in runs) / 8.4e6 < 20  # epochs of the ~8.4M training tokens
    # without a GPU, `auto` plans the same grid on CPUs
    assert all(tc.train.device == "cpu" and tc.gpus_per_worker == 0 for tc in train_configs(cfg, gpus=0))
