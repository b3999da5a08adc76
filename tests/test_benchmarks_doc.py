"""Every figure in BENCHMARKS.md comes from a stored results file (no Docker, no model).

The convention (stated at the top of BENCHMARKS.md):
- each ``## `` section names the script that measured it (``bench/NAME.py``) and the raw results
  it quotes (``bench/results/NAME.json``); both must exist;
- each results file records the script, the exact command, the date and the machine (CPU model,
  cores, memory), as ``bench/results_io.py`` writes them;
- every figure in the section's text (outside `code spans`) must be found in those files: a
  number equal to a stored value at the precision quoted (or to 100x the value: a share quoted as
  a percentage); a date or a version string must appear verbatim. Values under keys named
  ``raw``/``raw_*`` (raw series) do not count: quote the stored summaries;
- a section marked ``**Not measured**`` needs no results file, and may hold no figure at all;
- the text before the first section holds no figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "BENCHMARKS.md"

SCRIPT = re.compile(r"bench/[\w-]+\.py")
RESULTS = re.compile(r"bench/results/[\w.-]+\.json")
CODE = re.compile(r"`[^`]*`")
TOKEN = re.compile(r"[\w@/.,+*%()\[\]-]*\d[\w@/.,+*%()\[\]-]*")
NUMBER = r"[+-]?\d+(?:\.\d+)?(?:e-?\d+)?"
DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T[\d:]+Z?)?")
VERSION = re.compile(r"\d+(?:\.\d+){2,}(?:\+\w+)?")
PLAIN = re.compile(rf"{NUMBER}x?")
PAIR = re.compile(rf"({NUMBER})[-/]({NUMBER})")
META = ("script", "command", "date_utc", "machine")
MACHINE = ("cpu_model", "cores", "memory_gib")
NOT_MEASURED = "**Not measured**"


def sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    parts = re.split(r"^## ", text, flags=re.M)
    return parts[0], [(p.splitlines()[0].strip(), p) for p in parts[1:]]


def figures(text: str) -> list[tuple[str, str]]:
    """(kind, token) for every figure outside code spans: kind is number, date or version."""
    out = []
    for line in text.splitlines():
        line = CODE.sub(" ", line)
        for tok in TOKEN.findall(line):
            tok = tok.strip("*()[],.;:%").replace("**", "")
            if not tok or not tok[0].isdigit() and tok[0] not in "+-":
                continue  # an identifier with a digit in it: SmolLM2-135M, HumanEval/35, x86_64, pass@1
            if DATE.fullmatch(tok):
                out.append(("date", tok[:10]))
            elif VERSION.fullmatch(tok):
                out.append(("version", tok))
            elif PLAIN.fullmatch(tok):
                out.append(("number", tok.rstrip("x")))
            elif m := PAIR.fullmatch(tok):  # a range (0.000-0.104, 160-185) or a count (9/164)
                out += [("number", m.group(1)), ("number", m.group(2))]
            # anything else (13-gram, 4-bit, 1.5B...) is a name, not a figure
    return out


def stored_numbers(obj, key: str = "") -> list[float]:
    if key == "raw" or key.startswith("raw_"):
        return []
    nums = [float(n) for n in re.findall(r"\d+", key)]  # ci95 -> 95, pass@1 -> 1
    if isinstance(obj, bool) or obj is None:
        return nums
    if isinstance(obj, (int, float)):
        return nums + [float(obj)]
    if isinstance(obj, dict):
        return nums + [n for k, v in obj.items() for n in stored_numbers(v, str(k))]
    if isinstance(obj, list):
        return nums + [n for v in obj for n in stored_numbers(v)]
    return nums


def matches(quoted: str, stored: list[float]) -> bool:
    value = float(quoted)
    if "e" in quoted:  # 1e-3: exact
        tol = abs(value) * 1e-9
    else:
        decimals = len(quoted.split(".", 1)[1]) if "." in quoted else 0
        tol = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(v * k - abs(value)) <= tol for v in stored for k in (1, 100))


def check(text: str, root: Path = ROOT) -> list[str]:
    """Every problem with the document's sourcing, as a human-readable line."""
    problems = []
    preamble, secs = sections(text)
    problems += [f"preamble: figure {tok!r} outside any sourced section" for _, tok in figures(preamble)]
    for title, body in secs:
        figs = figures(body)
        if NOT_MEASURED in body:
            problems += [f"{title}: marked not measured but quotes {tok!r}" for _, tok in figs]
            continue
        scripts = set(SCRIPT.findall(body))
        files = set(RESULTS.findall(body))
        if not scripts:
            problems.append(f"{title}: names no bench/*.py script")
        if not files:
            problems.append(f"{title}: names no bench/results/*.json file")
        problems += [f"{title}: {s} does not exist" for s in sorted(scripts) if not (root / s).is_file()]
        raw_texts, numbers = [], []
        for f in sorted(files):
            path = root / f
            if not path.is_file():
                problems.append(f"{title}: {f} does not exist")
                continue
            data = json.loads(path.read_text())
            missing = [k for k in META if k not in data]
            missing += [f"machine.{k}" for k in MACHINE if k not in (data.get("machine") or {})]
            if missing:
                problems.append(f"{title}: {f} lacks {', '.join(missing)}")
            if data.get("script") and data["script"] not in scripts:
                problems.append(f"{title}: {f} was written by {data['script']}, which the section does not name")
            raw_texts.append(path.read_text())
            numbers += stored_numbers(data)
        if not files:
            continue
        for kind, tok in figs:
            ok = matches(tok, numbers) if kind == "number" else any(tok in t for t in raw_texts)
            if not ok:
                problems.append(f"{title}: {kind} {tok!r} is not in {', '.join(sorted(files))}")
    return problems


# ----- the document as it is -----

def test_every_figure_in_benchmarks_md_is_in_its_results_file():
    problems = check(DOC.read_text())
    assert not problems, "\n".join(problems)


def test_every_results_file_is_quoted_somewhere():
    text = DOC.read_text()
    unquoted = [p.name for p in (ROOT / "bench" / "results").glob("*.json") if f"bench/results/{p.name}" not in text]
    assert not unquoted, f"results stored but not quoted in BENCHMARKS.md: {unquoted}"


# ----- the check itself can fail -----

def _first_sourced_section(text: str) -> str:
    return next(title for title, body in sections(text)[1] if NOT_MEASURED not in body and RESULTS.search(body))


def test_an_unsourced_figure_is_caught():
    text = DOC.read_text()
    title = _first_sourced_section(text)
    doctored = text.replace(f"## {title}\n", f"## {title}\n\nWith 8 workers: 7.31 runs/s.\n", 1)
    problems = check(doctored)
    assert any("'7.31'" in p for p in problems), problems


def test_a_figure_that_disagrees_with_its_file_is_caught():
    text = DOC.read_text()
    title = _first_sourced_section(text)
    body = dict(sections(text)[1])[title]
    kind, tok = next((k, t) for k, t in figures(body) if k == "number" and "." in t)
    wrong = f"{float(tok) + 7.77:.{len(tok.split('.')[1])}f}"
    line = next(ln for ln in body.splitlines() if tok in CODE.sub(" ", ln))
    problems = check(text.replace(line, line.replace(tok, wrong), 1))
    assert any(repr(wrong) in p for p in problems), problems


def test_a_section_without_a_results_file_is_caught():
    problems = check(DOC.read_text() + "\n## Judge overhead\n\nThe judge adds 412 ms per call.\n")
    assert "Judge overhead: names no bench/results/*.json file" in problems
    assert "Judge overhead: names no bench/*.py script" in problems


def test_not_measured_sections_may_not_quote_figures():
    problems = check(DOC.read_text() + "\n## GPU\n\n**Not measured**: roughly 2.0x faster.\n")
    assert any("GPU: marked not measured but quotes '2.0'" in p for p in problems), problems


def test_a_results_file_without_its_machine_is_caught(tmp_path):
    text = DOC.read_text()
    title = _first_sourced_section(text)
    body = dict(sections(text)[1])[title]
    for rel in set(RESULTS.findall(body)) | set(SCRIPT.findall(body)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    rel = sorted(RESULTS.findall(body))[0]
    data = json.loads((tmp_path / rel).read_text())
    del data["machine"]
    (tmp_path / rel).write_text(json.dumps(data))
    problems = [p for p in check(text, tmp_path) if p.startswith(f"{title}:")]
    assert f"{title}: {rel} lacks machine, machine.cpu_model, machine.cores, machine.memory_gib" in problems


def test_figures_are_read_as_intended():
    got = figures("| a | **230 ms** (2.11x), 0/33 = 0.000 (0.000-0.104), 5.5 %, Docker 20.10.24, 2026-11-26 |\n"
                  "SmolLM2-135M on HumanEval/35, x86_64, 13-gram, `--pairs 15`, pass@1, lr 1e-3")
    assert got == [("number", "230"), ("number", "2.11"), ("number", "0"), ("number", "33"), ("number", "0.000"),
                   ("number", "0.000"), ("number", "0.104"), ("number", "5.5"), ("version", "20.10.24"),
                   ("date", "2026-11-26"), ("number", "1e-3")]
