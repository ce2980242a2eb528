"""Real Hugging Face hub ids keep working for users with a network or an HF cache -- proved offline.

The tiny model is published into a temporary hub cache laid out exactly as `huggingface_hub` lays one out
(`models--<org>--<name>/refs/main` holding the commit hash, `snapshots/<hash>/<file>` symlinks into
`blobs/<etag>`; see `huggingface_hub.file_download.repo_folder_name`/`try_to_load_from_cache`). The steps then run
as subprocesses with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` pointing there, given `--base_model_id
slmops-test/tiny-llama`: `from_pretrained` resolves the id from the cache exactly as it would a cached
`microsoft/Phi-3.5-mini-instruct`. `HF_ENDPOINT` points at a closed local port, so nothing could be downloaded
even if offline mode were ignored. An unknown id with an empty cache must fail with exit code 2 and a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HUB_ID = "slmops-test/tiny-llama"
TEMPLATE = "<|user|>\nWhat is the tone of this phrase? {phrase}<|end|>\n<|assistant|>\n{tone}"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")  # stored with Git LFS on the hub: etag = sha256


def publish_to_hub_cache(model_dir: Path, cache: Path, repo_id: str) -> Path:
    """Copy `model_dir` into `cache` as huggingface_hub's cache holds a downloaded model repo; returns the
    snapshot folder. Blobs are named by their etag (sha256 for LFS files, the git blob sha1 otherwise) and
    the snapshot holds relative symlinks to them, as `hf_hub_download` leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(f for f in model_dir.rglob("*") if f.is_file())
    tree = hashlib.sha1()
    for f in files:
        tree.update(f.relative_to(model_dir).as_posix().encode() + b"\0" + f.read_bytes())
    commit = tree.hexdigest()  # 40 hex digits, like a hub commit sha
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    for f in files:
        data = f.read_bytes()
        etag = (hashlib.sha256(data).hexdigest() if f.suffix in LFS_SUFFIXES
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo / "blobs" / etag).write_bytes(data)
        link = snapshot / f.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))
    (repo / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
    return snapshot


def hub_env(cache: Path) -> dict:
    """Environment for a step subprocess: offline, this cache only, no way to reach a server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "MLFLOW_", "AZUREML_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf_home"),
               HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    return env


def step(name: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"slmops.steps.{name}", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def listing(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (os.readlink(p) if p.is_symlink() else p.stat().st_size)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A huggingface_hub cache folder holding the tiny Llama as `slmops-test/tiny-llama` (and nothing else)."""
    from slmops.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("hub")
    model = build_tiny_model(root / "build" / "tiny-llama", arch="llama", seed=0)
    cache = root / "hf_cache"
    snapshot = publish_to_hub_cache(model, cache, HUB_ID)
    return {"cache": cache, "snapshot": snapshot, "model": model}


def test_cache_has_huggingface_hub_layout(hub_cache):
    """huggingface_hub's own cache scanner and lookup see the repo, its main ref and every file."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    cache, snapshot = hub_cache["cache"], hub_cache["snapshot"]
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type) == (HUB_ID, "model")
    (rev,) = repo.revisions
    assert rev.commit_hash == snapshot.name and rev.refs == frozenset({"main"})
    names = {f.file_name for f in rev.files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "slmops_tiny.json"} <= names
    assert names == {f.name for f in hub_cache["model"].iterdir()}
    found = try_to_load_from_cache(HUB_ID, "config.json", cache_dir=cache)
    assert found == str(snapshot / "config.json")


def test_steps_resolve_hub_id_from_cache(hub_cache, tone_jsonl, tmp_path):
    """prep -> finetune -> evaluate, each given only `--base_model_id slmops-test/tiny-llama`, offline."""
    cache = hub_cache["cache"]
    env = hub_env(cache)
    before = listing(cache)
    out = {name: tmp_path / name for name in ("data", "adapter", "model", "metrics", "checkpoints", "eval")}

    r = step("prep", ["--data", tone_jsonl, "--base_model_id", HUB_ID, "--template", TEMPLATE,
                      "--label_column", "tone", "--max_rows", "200", "--max_seq_len", "256",
                      "--output_data", out["data"]], env, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert {p.name for p in out["data"].iterdir()} >= {"train.jsonl", "validation.jsonl", "data_report.json"}
    report = json.loads((out["data"] / "data_report.json").read_text())
    assert HUB_ID in json.dumps(report), "data_report.json should name the hub id whose tokenizer was used"
    # Tokenized with the cached repo's tokenizer: ids decode, with the tiny model's own vocabulary, to the text.
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(hub_cache["model"])
    for line in (out["data"] / "train.jsonl").read_text().splitlines()[:5]:
        row = json.loads(line)
        assert tok.decode(row["input_ids"]) == row["prompt"] + row["completion"] + tok.eos_token

    r = step("finetune", ["--train_data", out["data"], "--base_model_id", HUB_ID, "--method", "lora",
                          "--max_steps", "3", "--batch_size", "8", "--eval_steps", "0", "--save_steps", "0",
                          "--logging_steps", "1", "--learning_rate", "0.002", "--seed", "0",
                          *[a for k in ("adapter", "model", "metrics", "checkpoints")
                            for a in (f"--{k}", out[k])]], env, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out["metrics"] / "train_summary.json").read_text())
    assert summary["base_model"] == HUB_ID and summary["global_step"] == 3
    adapter_cfg = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == HUB_ID  # the adapter points at the hub id, not a path
    assert (out["model"] / "MLmodel").is_file() and (out["model"] / "model" / "config.json").is_file()

    r = step("evaluate", ["--test_data", out["data"], "--model", out["model"], "--base_model_id", HUB_ID,
                          "--train_metrics", out["metrics"], "--task", "classification",
                          "--max_samples", "5", "--max_new_tokens", "4", "--metrics", out["eval"]], env, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = json.loads((out["eval"] / "metrics.json").read_text())
    assert metrics["n"] == 5 and "accuracy" in metrics["base"] and "accuracy" in metrics["finetuned"]
    assert HUB_ID in (out["eval"] / "report.md").read_text()

    # The id was only read from the cache: nothing added, changed or removed there.
    assert listing(cache) == before


def test_unknown_hub_id_with_empty_cache_is_a_user_error(tmp_path, tone_jsonl):
    """Offline, empty cache, unknown id: exit code 2 and a message naming the id and the fixes, no traceback."""
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    bad = "slmops-test/no-such-model"
    r = step("prep", ["--data", tone_jsonl, "--base_model_id", bad, "--template", TEMPLATE,
                      "--label_column", "tone", "--output_data", tmp_path / "data"], hub_env(cache), tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    assert r.stderr.startswith("error: "), r.stderr
    msg = r.stderr.lower()
    assert bad in r.stderr
    assert "hf_hub_offline" in msg and "log in" in msg and "local model folder" in msg
    assert not (tmp_path / "data").exists()
    assert list(cache.iterdir()) == []
