"""slmops.pipeline.lineage: the project's git state read once per run, and the variables each step gets."""

from __future__ import annotations

import json
import subprocess

from slmops.pipeline import lineage


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin"})


def test_git_state_clean_dirty_untracked_and_outside_a_repository(tmp_path):
    repo = tmp_path / "project"
    (repo / "pipelines").mkdir(parents=True)
    (repo / "pipelines" / "p.yaml").write_text("a: 1\n")
    (repo / ".gitignore").write_text("runs/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert len(head) == 40

    (repo / "runs").mkdir()                               # ignored: still clean
    (repo / "runs" / "out.txt").write_text("x")
    assert lineage.git_state(repo / "pipelines") == {"commit": head, "dirty": False}
    (repo / "pipelines" / "p.yaml").write_text("a: 2\n")  # a changed tracked file
    assert lineage.git_state(repo / "pipelines") == {"commit": head, "dirty": True}
    _git(repo, "checkout", "--", "pipelines/p.yaml")
    (repo / "new.py").write_text("")                      # an untracked file the code snapshot would take
    assert lineage.git_state(repo) == {"commit": head, "dirty": True}

    outside = tmp_path / "plain"
    outside.mkdir()
    assert lineage.git_state(outside) is None


def test_step_env_sets_only_what_is_known():
    assert lineage.step_env(None, {}, {}) == {}
    env = lineage.step_env({"commit": "c" * 40, "dirty": False}, {"register": "slmops_register:0.1.0"},
                           {"model": "run1"})
    assert env == {"SLMOPS_GIT_COMMIT": "c" * 40, "SLMOPS_GIT_DIRTY": "false",
                   "SLMOPS_COMPONENTS": json.dumps({"register": "slmops_register:0.1.0"}),
                   "SLMOPS_INPUT_RUNS": json.dumps({"model": "run1"})}
    assert lineage.step_env({"commit": "c" * 40, "dirty": None}, {}, {}) == {"SLMOPS_GIT_COMMIT": "c" * 40}


def test_the_graph_names_each_node_s_component_as_its_yaml_declares(tmp_path):
    from pathlib import Path

    from slmops.pipeline.load import load

    root = Path(__file__).resolve().parents[2]
    loaded = load(root / "pipelines" / "finetune.yaml", {}, target="local", cwd=root)
    import yaml

    specs = {n: yaml.safe_load((root / "components" / n / "component.yaml").read_text()) for n in loaded.graph.nodes}
    assert {n: node.component_ref for n, node in loaded.graph.nodes.items()} == {
        n: f"slmops_{n}:{spec['version']}" for n, spec in specs.items()}
    assert set(specs) == {"prep", "finetune", "evaluate", "optimize", "register"}
