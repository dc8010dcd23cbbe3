"""Artifacts, the run manifest, and atomic file writes.

The manifest is the single source of truth of a run: reports and the Python
result object are views of it. It is JSON with a ``schema_version``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Below this many samples a run's checks rest on too little: a verdict (one changed answer is several
# accuracy points) and an int8 file's calibrated ranges. Said in the report and on the console.
FEW_SAMPLES = 32
# A file that failed verification is kept for inspection under this prefix (failed-model.tflite): under
# its target's own name, a script shipping build/*/model.* took it beside the files that passed.
FAILED_PREFIX = "failed-"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_size(path: Path) -> int:
    """Size of the file gzipped at level 6 (gzip's and most web servers' default): what a download costs."""
    class _Counter:
        n = 0

        def write(self, b: bytes) -> int:
            self.n += len(b)
            return len(b)

        def flush(self) -> None:
            pass

    counter = _Counter()
    with open(path, "rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as gz:  # type: ignore[arg-type]
        for chunk in iter(lambda: src.read(1 << 20), b""):
            gz.write(chunk)
    return counter.n


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename onto ``final`` only on success.

    An exception or interrupt inside the block removes the temporary file, so
    no truncated file ever appears under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@dataclass
class Artifact:
    """One file a step produced, with where it came from and what checking it found."""

    target: str
    format: str
    path: str  # relative to the run's output directory
    sha256: str = ""
    size_bytes: int = 0
    gzip_bytes: int = 0
    parent: str = ""  # the model (or artifact) it was made from
    step: str = "convert"
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"  # ok | failed
    error: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)  # per step: seconds, peak_rss_bytes
    extra_files: list[str] = field(default_factory=list)  # e.g. ONNX external data, relative to out dir
    footprint: dict[str, Any] = field(default_factory=dict)  # e.g. TFLite Micro flash/arena bytes
    candidate_of: str = ""  # set when built as a candidate of an -auto target
    selection: dict[str, Any] = field(default_factory=dict)  # for -auto targets: candidates and why the winner won

    @property
    def reason(self) -> str:
        """``error`` as said beside the target's name: without the "<target>: " a converter's message
        starts with (the CLI printed "tflm-int8 failed: tflm-int8: TFLite Micro has no kernel ...")."""
        prefix = f"{self.target}: "
        return self.error[len(prefix):] if self.error.startswith(prefix) else self.error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Artifact":
        return cls(**data)


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that shape the artifacts and timings."""
    out = {}
    for dist in ("deploykit", "tensorflow", "keras", "tf-keras", "ai-edge-litert", "tf2onnx", "onnx",
                 "onnxruntime", "tflite-micro", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict[str, Any]:
    """CPU, core count, memory and OS: timings mean little without them."""
    import psutil

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


@dataclass
class Manifest:
    """Everything a run made and found; written as ``manifest.json``."""

    model: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=tool_versions)
    machine: dict[str, Any] = field(default_factory=machine_info)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """True when every requested target passed (a losing -auto candidate may fail)."""
        return all(a.status == "ok" for a in self.artifacts if not a.candidate_of)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["artifacts"] = [a.to_dict() for a in self.artifacts]
        return data

    def to_json(self) -> str:
        # NaN/inf (an artifact that computes NaN) are null: JSON has no such numbers, and JSON.parse refuses them
        return json.dumps(_finite(self.to_dict()), indent=2, sort_keys=False, default=_json_default, allow_nan=False)

    def write(self, out_dir: Path) -> Path:
        """Write ``manifest.json`` atomically into ``out_dir``."""
        path = Path(out_dir) / MANIFEST_NAME
        write_text_atomic(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            from deploykit.errors import UserError

            raise UserError(f"manifest schema_version {version!r} is not supported (this deploykit reads {SCHEMA_VERSION})")
        data = dict(data)
        data["artifacts"] = [Artifact.from_dict(a) for a in data.get("artifacts", [])]
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None."""
    import math

    import numpy as np

    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return _finite(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
