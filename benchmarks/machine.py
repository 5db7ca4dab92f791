"""A description of the machine and software a benchmark ran on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

_LSCPU_KEYS = (
    "Model name",
    "Vendor ID",
    "CPU family",
    "Model",
    "Thread(s) per core",
    "Core(s) per socket",
    "Socket(s)",
    "CPU max MHz",
    "L1d cache",
    "L2 cache",
    "L3 cache",
    "Hypervisor vendor",
)


def _lscpu() -> dict[str, str]:
    if shutil.which("lscpu") is None:
        return {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _LSCPU_KEYS:
            out[key.strip()] = value.strip()
    return out


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                    return [x for x in wanted if x in flags]
    except OSError:
        pass
    return []


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on a shared machine shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


OWN_PIDS: set[int] = set()
"""Processes this run started whose CPU time is its own (a data-parallel row's workers)."""
_last_ticks: dict[int, int] = {}  # a finished worker keeps the ticks it was last seen with


_retired: dict[int, int] = {}  # finished workers' last ticks, no longer read (pids get reused)


def retire(pids: tuple[int, ...]) -> None:
    """Workers that have exited: their last reading keeps counting as the run's own, and
    their pids are no longer read (another process may get one)."""
    _worker_ticks()
    for pid in pids:
        OWN_PIDS.discard(pid)
        _retired[pid] = _retired.get(pid, 0) + _last_ticks.pop(pid, 0)


def _worker_ticks() -> int:
    total = sum(_retired.values())
    for pid in sorted(OWN_PIDS):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            _last_ticks[pid] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
        total += _last_ticks.get(pid, 0)
    return total


class CpuMeter:
    """How many CPUs other processes kept busy between ``start`` and ``read`` (Linux).

    From /proc/stat (every CPU's busy ticks) minus this process's own ticks (/proc/self/stat)
    and those of the workers it started (``OWN_PIDS``): a benchmark on a shared machine shows
    here how much of the machine it did not have.
    """

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _ticks() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        steal = fields[7] if len(fields) > 7 else 0
        busy = user + nice + system + irq + softirq
        mine = int(own[11]) + int(own[12]) + _worker_ticks()  # utime + stime
        return busy, mine, steal

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.ticks0 = self._ticks()

    def read(self) -> dict[str, float] | None:
        """{"other_cpus": mean CPUs busy with other processes, "steal_cpus": taken by the host}."""
        ticks = self._ticks()
        elapsed = time.monotonic() - self.t0
        if ticks is None or self.ticks0 is None or elapsed <= 0:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy, own, steal = (b - a for a, b in zip(self.ticks0, ticks, strict=True))
        return {
            "other_cpus": round(max(0.0, (busy - own) / hz / elapsed), 2),
            "steal_cpus": round(max(0.0, steal / hz / elapsed), 2),
        }


def source_version() -> dict[str, Any]:
    """rosetta-rnn's version and, in a git checkout, the commit (``+dirty`` with local edits)."""
    from rosetta_rnn import __version__

    out: dict[str, Any] = {"version": __version__}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        cmd = ["git", "-C", root, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return out
    if commit:
        out["git"] = commit + ("+dirty" if dirty else "")
    return out


def gpus() -> list[str]:
    """Each NVIDIA GPU as ``nvidia-smi`` names it (name, driver, memory); none without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,driver_version,memory.total"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _cuda_versions() -> dict[str, Any]:
    """The CUDA and cuDNN builds of the frameworks already imported (none are imported here)."""
    found: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.version.cuda:
        found["torch_cuda"] = torch.version.cuda
        found["torch_cudnn"] = torch.backends.cudnn.version()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        found["cupy"] = cupy.__version__
        found["cupy_cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return found


def describe(frameworks: dict[str, dict[str, Any]], threads: dict[str, Any]) -> dict[str, Any]:
    """CPU, cores, memory, GPUs, OS, Python, framework versions and thread settings."""
    lscpu = _lscpu()
    return {
        "cpu": lscpu.get("Model name") or platform.processor() or platform.machine(),
        "lscpu": lscpu,
        "cpu_flags": _cpu_flags(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "gpus": gpus(),
        "cuda": _cuda_versions(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "rosetta_rnn": source_version(),
        "frameworks": frameworks,
        "threads": threads,
        "load_average_start": load_average(),
    }


def markdown(machine: dict[str, Any], rows: Sequence[dict[str, Any]] = ()) -> str:
    """``machine.md``: the machine, the software, how threads were set, and the path each peer
    row's framework took (its ``path``, ``benchmarks.kernels``)."""
    lines = ["# Machine", ""]
    lines.append(f"- CPU: {machine['cpu']} ({machine['cpus']} CPUs visible)")
    for key, value in machine.get("lscpu", {}).items():
        if key != "Model name":
            lines.append(f"  - {key}: {value}")
    if machine.get("cpu_flags"):
        lines.append(f"- SIMD: {', '.join(machine['cpu_flags'])}")
    lines.append(f"- Memory: {machine['memory_gb']} GB")
    for gpu in machine.get("gpus", []):
        lines.append(f"- GPU: {gpu}")
    if machine.get("cuda"):
        lines.append(f"- CUDA builds: {machine['cuda']}")
    lines.append(f"- OS: {machine['os']}")
    lines.append(f"- Python {machine['python']}")
    source = machine.get("rosetta_rnn", {})
    lines.append(f"- rosetta-rnn {source.get('version')} (git {source.get('git', '-')})")
    lines.append(
        f"- Load average (1/5/15 min) at start {machine.get('load_average_start')}, "
        f"at end {machine.get('load_average_end')}"
    )
    background = machine.get("background")
    if background:
        lines.append(
            f"- CPUs kept busy by other processes during the run: {background['other_cpus']} on "
            f"average (host steal {background['steal_cpus']})"
        )
    lines += ["", "## Frameworks", "", "| framework | version | import RSS (MB) | threads |"]
    lines.append("|---|---|---|---|")
    for name, fw in machine["frameworks"].items():
        rss = fw.get("import_rss_mb")
        lines.append(
            f"| {name} | {fw.get('version', '-')} | "
            f"{'-' if rss is None else f'{rss:.0f}'} | {fw.get('threads', '-')} |"
        )
    threads = machine["threads"]
    lines += ["", "## Threads", ""]
    lines.append(f"- every framework: {threads.get('threads')} thread(s)")
    if "affinity" in threads:
        lines.append(f"- CPU affinity of the process: {threads['affinity']}")
    for var, value in threads.get("env", {}).items():
        lines.append(f"- `{var}={value}`")
    if "numpy" in threads:
        lines.append(f"- NumPy: {threads['numpy']}")
    if threads.get("openblas_set"):
        libs = ", ".join(threads["openblas_set"])
        lines.append(f"- OpenBLAS pools set to {threads.get('threads')} thread(s): {libs}")
    return "\n".join(lines + _paths(rows)) + "\n"


def _paths(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A table of the path each peer row's framework took, one line per peer, cell, workload,
    dtype and device (the sweeps' rows repeat the main shape's)."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("backend") == "peer" and r.get("path"):
            key = (r["name"], r.get("cell", "rnn"), r["workload"], r["dtype"], r["device"])
            seen.setdefault(key, r["path"])
    if not seen:
        return []
    out = [
        "",
        "## What each peer ran",
        "",
        "Read from the run after timing (`benchmarks/kernels.py`): torch's operators under its "
        "profiler, the Keras model's traced operations, the compiled XLA program.",
        "",
        "| peer | cell | workload | dtype | device | recurrence | settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, cell, workload, dtype, device), path in seen.items():
        rest = "; ".join(f"{k}: {_plain(v)}" for k, v in path.items() if k != "recurrence")
        recurrence = path.get("recurrence", "-")
        out.append(f"| {name} | {cell} | {workload} | {dtype} | {device} | {recurrence} | {rest} |")
    return out


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)
