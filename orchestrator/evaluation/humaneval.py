"""Held-out HumanEval: pass@k with confidence intervals, paired comparisons, contamination.

Each problem is asked through the same patch protocol as the loop (the model writes
``example.py``; schema and policy apply) and graded by the problem's hidden test in the
hardened sandbox: a sample is correct when that test passed in a run whose verdict is
``pass`` or ``fail`` (a tampered, timed-out or errored run is never correct).
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel

from orchestrator.agent.tasks import humaneval_number, humaneval_problems, humaneval_split, humaneval_task
from orchestrator.evaluation.grading import attempt_task, graded_verdict
from orchestrator.sandbox.container import SandboxLimits

Z95 = 1.959963984540054


class ProblemResult(BaseModel):
    task_id: str
    n: int
    correct: int
    verdicts: list[str]
    rejected: int = 0  # replies refused by schema or policy (counted as incorrect)
    reasons: list[str] = []  # why each refused reply was refused (its first reason)


def task_ids(split: str = "heldout", only: list[str] | None = None) -> list[str]:
    ids = sorted(humaneval_problems(), key=humaneval_number)
    if only:
        wanted = {t if "/" in t else f"HumanEval/{t}" for t in only}
        ids = [t for t in ids if t in wanted]
    return [t for t in ids if split == "all" or humaneval_split(t) == split]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: list[float], iters: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean (problems resampled with replacement)."""
    if not values:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(iters))
    return means[int(0.025 * iters)], means[int(0.975 * iters) - 1]


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of b - a over the same problems, with a bootstrap 95% interval."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same problems")
    diffs = [y - x for x, y in zip(a, b)]
    lo, hi = bootstrap_ci(diffs)
    mean = sum(diffs) / len(diffs) if diffs else 0.0
    return {"difference": mean, "ci95": [lo, hi], "excludes_zero": lo > 0 or hi < 0, "problems": len(diffs)}


def summarize(results: list[ProblemResult], k: int = 1) -> dict:
    per_problem = [pass_at_k(r.n, r.correct, k) for r in results]
    score = sum(per_problem) / len(per_problem) if per_problem else 0.0
    if all(r.n == 1 for r in results):
        lo, hi = wilson(sum(r.correct for r in results), len(results))
    else:
        lo, hi = bootstrap_ci(per_problem)
    return {f"pass@{k}": score, "ci95": [lo, hi], "problems": len(results),
            "samples_per_problem": results[0].n if results else 0}


def report(runs: list[dict], k: int, split: str, meta: dict, comparison: dict | None = None,
           baseline: str | None = None) -> tuple[dict, str]:
    """``rsi eval``'s summary of one or more seeds (each a ``summarize`` result; the first is the headline,
    the others add their spread) with ``meta`` (suite, model...) and, against a baseline, the paired
    comparison (gate.compare); and its one-line reading."""
    summary = {**runs[0], **meta}
    if len(runs) > 1:
        scores = [r[f"pass@{k}"] for r in runs]
        summary["seeds"] = {"scores": scores, "mean": statistics.mean(scores), "std": statistics.stdev(scores)}
    lo, hi = summary["ci95"]
    line = f"pass@{k} = {summary[f'pass@{k}']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {summary['problems']} {split} problems"
    if comparison:
        summary["baseline"] = {"adapter": baseline, **comparison["current"]}
        summary["difference"] = {key: comparison[key] for key in ("difference", "ci95", "excludes_zero", "problems")}
        d, (dlo, dhi) = comparison["difference"], comparison["ci95"]
        line += (f"; baseline {baseline} {comparison['current']['pass@1']:.3f}; paired difference {d:+.3f} "
                 f"(95% CI {dlo:+.3f} to {dhi:+.3f}, {'excludes' if comparison['excludes_zero'] else 'includes'} zero)")
    return summary, line


SAMPLE_TEMPERATURE = 0.8


class _Batch:
    """The n samples of one problem from one ``generate_many`` call (a batch on the vllm backend),
    handed to the n graded attempts one by one (every attempt asks the same prompt)."""

    def __init__(self, backend, n: int, seed: int):
        self.backend, self.n, self.seed = backend, n, seed
        self.replies: list[str] | None = None
        self.name, self.model_id, self.adapter_id = backend.name, backend.model_id, backend.adapter_id

    def generate(self, messages, phase, task=None, seed=None, **options):  # options: e.g. the reply format
        if self.replies is None:
            self.replies = self.backend.generate_many(messages, phase, task, n=self.n,
                                                      temperature=SAMPLE_TEMPERATURE, seed=self.seed, **options)
        return self.replies.pop(0)


def evaluate_problem(backend, task_id: str, n: int, limits: SandboxLimits, tmp: Path,
                     seed_base: int = 0) -> ProblemResult:
    task = humaneval_task(task_id, tmp / "tasks")
    hidden = next(iter(task.hidden_tests))
    verdicts, correct, rejected, reasons = [], 0, 0, []
    batch = _Batch(backend, n, seed_base) if n > 1 else backend  # sample i has seed seed_base + i
    for s in range(n):
        attempt = attempt_task(batch, task, tmp / f"ws-{humaneval_number(task_id)}-{s}", limits)
        if attempt.result is None:
            verdicts.append("rejected")
            rejected += 1
            reasons.append(str(attempt.decision.reasons[0])[:200] if attempt.decision.reasons else "")
            continue
        verdicts.append(graded_verdict(attempt.result))
        correct += attempt.passed(hidden)
    return ProblemResult(task_id=task_id, n=n, correct=correct, verdicts=verdicts, rejected=rejected,
                         reasons=reasons)


BATCHED_PROBLEMS = 8  # problems in flight at once on a batching backend (vLLM batches their requests)


def evaluate(backend, ids: list[str], n: int = 1, limits: SandboxLimits | None = None, seed_base: int = 0,
             on_problem=None, concurrency: int | None = None) -> list[ProblemResult]:
    """The problems in ``ids``, in that order. A backend that batches (vLLM) gets up to
    ``BATCHED_PROBLEMS`` problems at once (their requests share the server's batch; greedy replies
    do not depend on the order); any other backend one at a time."""
    limits = limits or SandboxLimits.load()
    if concurrency is None:
        concurrency = BATCHED_PROBLEMS if "batching" in getattr(backend, "capabilities", ()) else 1
    results = []
    with tempfile.TemporaryDirectory(prefix="rsi-eval-") as tmp:
        if concurrency <= 1 or len(ids) <= 1:
            for tid in ids:
                r = evaluate_problem(backend, tid, n, limits, Path(tmp), seed_base)
                results.append(r)
                if on_problem:
                    on_problem(r)
            return results
        with ThreadPoolExecutor(min(concurrency, len(ids)), thread_name_prefix="rsi-eval") as pool:
            futures = [pool.submit(evaluate_problem, backend, tid, n, limits, Path(tmp), seed_base) for tid in ids]
            try:
                for future in futures:
                    r = future.result()
                    results.append(r)
                    if on_problem:
                        on_problem(r)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results


# ----- contamination -----

_TOKEN = re.compile(r"\w+|[^\w\s]")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = _TOKEN.findall(text)
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def contamination(samples_file: Path, split: str = "heldout", n: int = 13) -> list[dict]:
    """Held-out problems whose prompt body or canonical solution shares an n-gram with the archive."""
    archive = set()
    if samples_file.exists():
        for line in samples_file.read_text(encoding="utf-8").split("\n"):  # JSON Lines: never splitlines
            if line.strip():
                for m in json.loads(line).get("messages", []):
                    archive |= ngrams(m.get("content", ""), n)
    hits = []
    for tid, p in sorted(humaneval_problems().items(), key=lambda kv: humaneval_number(kv[0])):
        if split != "all" and humaneval_split(tid) != split:
            continue
        for field in ("canonical_solution", "prompt"):
            shared = ngrams(p[field], n) & archive
            if shared:
                hits.append({"task_id": tid, "field": field, "shared_ngrams": len(shared),
                             "example": " ".join(next(iter(shared)))})
    return hits
