"""What a pipeline run tells its steps about where it came from: the project's git commit (and whether its working
tree was dirty), read once per run before any `code:` folder is snapshotted, and the component versions.

    git = git_state(Path("pipelines/finetune.yaml").resolve().parent)  # {"commit": "1a2b...", "dirty": False} | None
    env = step_env(git, {"register": "slmops_register:0.1.0"}, {"model": "<finetune's MLflow run id>"})

`slmops run` (slmops.runner) sets all four for each step; `slmops submit` (slmops.azure.submit.set_lineage_env) sets the
git and component ones as each Azure ML job's environment_variables. slmops.steps.register records them as tags
(slmops.registration reads them under the same names).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

GIT_COMMIT = "SLMOPS_GIT_COMMIT"      # the project's HEAD when the pipeline run started
GIT_DIRTY = "SLMOPS_GIT_DIRTY"        # "true" when tracked files were changed or untracked files present, else "false"
COMPONENTS = "SLMOPS_COMPONENTS"      # JSON {node: "name:version"} of every node of the pipeline
INPUT_RUNS = "SLMOPS_INPUT_RUNS"      # JSON {input: MLflow run id of the step (or best sweep trial) that produced it}


def git_state(folder: Path) -> dict | None:
    """{"commit", "dirty"} of the git work tree holding `folder`, or None when it is not in one (or git is missing).
    Dirty: `git status --porcelain` lists anything (changed, staged or untracked files not ignored)."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    status = git("status", "--porcelain")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def step_env(git: dict | None, components: dict[str, str], input_runs: dict[str, str]) -> dict[str, str]:
    """The lineage variables of one step's environment (none for what is unknown)."""
    env = {}
    if git:
        env[GIT_COMMIT] = git["commit"]
        if git.get("dirty") is not None:
            env[GIT_DIRTY] = "true" if git["dirty"] else "false"
    if components:
        env[COMPONENTS] = json.dumps(components, sort_keys=True)
    if input_runs:
        env[INPUT_RUNS] = json.dumps(input_runs, sort_keys=True)
    return env
