"""`python -m cluster.drain`: stop the studies whose drivers run on this machine as SIGTERM stops one (like Ctrl-C:
running steps save a checkpoint, up to STEP_STOP_GRACE_S of pipelines.step_status), and wait until they have exited.

The KubeRay templates run it as the head pod's preStop hook: a pod that is deleted or evicted (a node drained, a
spot node reclaimed) would otherwise lose what its studies did since their last checkpoint, since the container's
first process (KubeRay's `bash -lc ... ray start --block`) passes no signal on, and the pod is killed when its
terminationGracePeriodSeconds (longer than the checkpoint grace) run out. Submitting the study again (a RayJob's
backoffLimit does) resumes it.
"""

from __future__ import annotations

import signal
import sys

from pipelines.step_status import STEP_STOP_GRACE_S

WAIT_S = STEP_STOP_GRACE_S + 45  # the checkpoint grace, then the study's own stopping; below the pods' 180 s


def is_study_driver(cmdline: list[str]) -> bool:
    """`arscale study run ...` or `python -m pipelines.cli study run ...`. Not the shell that runs one (`sh -c
    "arscale study run ..."`, as Ray runs a job's entrypoint): were it to end first, Ray would take the job as
    ended and clean up its processes, the study's before it has saved its checkpoints."""
    return any(cmdline[i:i + 2] == ["study", "run"] and cmdline[i - 1].endswith(("arscale", "pipelines.cli"))
               for i in range(1, len(cmdline)))


def drain(processes=None, wait_s: float = WAIT_S, log=print) -> int:
    """SIGTERM each study driver among `processes` (default: every process on the machine) and wait up to `wait_s`
    for them to exit; returns how many are still running."""
    import psutil

    drivers = []
    for process in psutil.process_iter() if processes is None else processes:
        try:
            if is_study_driver(process.cmdline()):
                process.send_signal(signal.SIGTERM)
                drivers.append(process)
        except psutil.Error:  # ended meanwhile, or not ours to signal
            continue
    _, alive = psutil.wait_procs(drivers, timeout=wait_s)
    log(f"stopped {len(drivers) - len(alive)} of {len(drivers)} studies"
        + (f"; still running after {wait_s:.0f}s: pids {', '.join(str(p.pid) for p in alive)}" if alive else ""))
    return len(alive)


if __name__ == "__main__":
    sys.exit(1 if drain() else 0)
