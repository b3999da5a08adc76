"""Every sandbox run's evidence, kept with the run and re-gradable offline (SWE-bench's split of
running from grading).

A run directory's ``evidence/`` holds one gzip'd JSON file per sandbox run, named by the SHA-256 of
its content: the raw evidence the host graded (the container's authenticated report, amended with
what only the host knows: its clock, the engine's OOM flag, the canaries it staged), the baseline
the run was judged against (if any), and the graded summary the run used. ``regrade`` grades the
same evidence again with the grader as it is now (``rsi sandbox regrade RUN_DIR``): after a change
to the grader it shows which past verdicts would change, and an edited file is caught by its name.

Recording is switched on per process by the driver of a run (``record_to``); ``run_tests`` calls
``save`` for every result that carries evidence. Providers that run elsewhere (Ray) send the
evidence back with the result.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import zlib
from pathlib import Path

from orchestrator.sandbox.runner.codec import CodecError
from orchestrator.sandbox.runner.codec import loads as bounded_loads

FORMAT = 1
MAX_EVIDENCE_BYTES = 64 * 1024 * 1024  # uncompressed, per file
_lock = threading.Lock()
_directory: Path | None = None


def record_to(directory: Path | None) -> None:
    """Save the evidence of every following sandbox run of this process under ``directory``
    (None: stop)."""
    global _directory
    with _lock:
        _directory = Path(directory) if directory is not None else None
        if _directory is not None:
            _directory.mkdir(parents=True, exist_ok=True)


def recording() -> Path | None:
    return _directory


def summary(result) -> dict:
    """What a re-grade must reproduce: the verdicts and counts of both phases."""
    def phase(p) -> dict | None:
        if p is None:
            return None
        return {"verdict": p.verdict, "passed": p.passed, "failed": p.failed, "errors": p.errors,
                "skipped": p.skipped, "tests": len(p.tests)}

    return {"visible": phase(result), "judged": phase(getattr(result, "judged", None))}


def save(result, evidence: dict, baseline=None) -> str | None:
    """Write one run's evidence when recording is on; returns its id (SHA-256 of the content)."""
    directory = _directory
    if directory is None or evidence is None:
        return None
    record = {"format": FORMAT, "evidence": evidence, "container_exit": getattr(result, "container_exit", None),
              "baseline": baseline.model_dump(exclude={"output"}) if baseline is not None else None,
              "graded": summary(result)}
    data = json.dumps(record, sort_keys=True, default=str).encode()
    digest = hashlib.sha256(data).hexdigest()
    path = directory / f"{digest}.json.gz"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(data, mtime=0))
        tmp.replace(path)
    return digest


def load(path: Path) -> tuple[dict, bool]:
    """(record, whether the content still matches the file's name)."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read(MAX_EVIDENCE_BYTES + 1)
    except zlib.error as exc:  # a valid gzip header, then data that is not deflate (a bad CRC is an OSError)
        raise ValueError(f"{path.name}: not gzip data ({exc})") from exc
    if len(data) > MAX_EVIDENCE_BYTES:
        raise ValueError(f"{path.name}: larger than {MAX_EVIDENCE_BYTES} bytes")
    intact = hashlib.sha256(data).hexdigest() == path.name.split(".", 1)[0]
    try:
        record = bounded_loads(data, max_bytes=MAX_EVIDENCE_BYTES)
    except CodecError as exc:
        raise ValueError(f"{path.name}: not evidence ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("evidence"), dict):
        raise ValueError(f"{path.name}: not evidence")
    return record, intact


def regrade_record(record: dict):
    """The SandboxResult the current grader gives this evidence (and its baseline)."""
    from orchestrator.sandbox.container import SandboxResult, with_baseline
    from orchestrator.sandbox.runner.grader import grade

    result = SandboxResult(**grade(dict(record["evidence"])), container_exit=record.get("container_exit"))
    if isinstance(record.get("baseline"), dict):
        result = with_baseline(result, SandboxResult(**record["baseline"]))
    return result


def regrade(directory: Path) -> dict:
    """Re-grade every evidence file under ``directory``: counts, and one row per file whose
    verdicts or counts differ, or whose content no longer matches its name."""
    files = sorted(Path(directory).glob("*.json.gz"))
    rows, agree = [], 0
    for path in files:
        try:
            record, intact = load(path)
            now = summary(regrade_record(record))
        except (OSError, ValueError, EOFError, TypeError, KeyError) as exc:
            rows.append({"file": path.name, "problem": f"unreadable: {str(exc)[:200]}"})
            continue
        if not intact:
            rows.append({"file": path.name, "problem": "content does not match its name (edited)"})
        elif now != record.get("graded"):
            rows.append({"file": path.name, "problem": "grades differently now", "then": record.get("graded"),
                         "now": now})
        else:
            agree += 1
    return {"runs": len(files), "agree": agree, "differ": rows}
