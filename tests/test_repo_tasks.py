"""Bug-fix tasks from a project's own code (orchestrator/evaluation/repo_tasks.py): ``rsi run --workspace REPO
--suite bugfix``. Unit tests of each part, then the real sandbox: tasks generated from a small
project and from toolz (the corpus), graded through the real judge, hostile replies included, and
rounds that archive verified fixes."""

from __future__ import annotations

import ast
import json
import math
import random
import re
import textwrap
from pathlib import Path

import pytest

from orchestrator.protocol.policy import Policy
from orchestrator.protocol.pipeline import check
from orchestrator.protocol.reply_format import ReplyFormat, splice_function
from orchestrator.evaluation import repo_tasks
from orchestrator.evaluation.repo_tasks import cases_for, expected_ok, literal_calls, render_hidden, withhold
from orchestrator.sandbox.runner.codec import encode
from orchestrator.protocol.schema import ReplyError
from tests.value_hacks import HACKS

CORE = '''"""A small library."""

import math  # used below


def clamp(x, lo, hi):
    """x held within [lo, hi]."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def total(items):
    s = 0
    for v in items:
        s += v
    return s


def pairs(seq):
    for i in range(len(seq) - 1):
        yield (seq[i], seq[i + 1])


def root(x):
    if x < 0:
        raise ValueError("negative")
    return math.isqrt(x)
'''

TESTS = '''from mini.core import clamp, pairs, root, total

import pytest


def test_clamp_low():
    assert clamp(-5, 0, 10) == 0
    assert clamp(-1, 0, 3) == 0


def test_clamp_high():
    assert clamp(50, 0, 10) == 10
    assert clamp(4, 0, 3) == 3


def test_clamp_inside():
    assert clamp(5, 0, 10) == 5
    assert clamp(0, 0, 10) == 0
    assert clamp(10, 0, 10) == 10


def test_total():
    assert total([1, 2, 3]) == 6
    assert total([]) == 0


def test_total_more():
    assert total([-1, 1]) == 0
    assert total((5, 7)) == 12


def test_pairs():
    assert list(pairs([1, 2, 3])) == [(1, 2), (2, 3)]
    assert list(pairs([1])) == []


def test_pairs_text():
    assert list(pairs("abc")) == [("a", "b"), ("b", "c")]


def test_root():
    assert root(16) == 4
    assert root(17) == 4
    with pytest.raises(ValueError):
        root(-1)
'''


def mini_project(root: Path) -> Path:
    (root / "mini").mkdir(parents=True)
    (root / "mini" / "__init__.py").write_text("")
    (root / "mini" / "core.py").write_text(CORE)
    (root / "test_core.py").write_text(TESTS)
    (root / "pyproject.toml").write_text('[project]\nname = "mini"\nversion = "1.0"\n')
    return root


# ----- unit: the function reply -----

def test_splice_replaces_only_that_function_and_keeps_the_rest_byte_for_byte():
    new = "def total(items):\n    return sum(items)\n"
    out = splice_function(CORE, "total", new)
    assert "return sum(items)" in out and "s += v" not in out
    assert out.replace(new.rstrip("\n"), "") == CORE.replace(
        "def total(items):\n    s = 0\n    for v in items:\n        s += v\n    return s", "")
    decorated = "import functools\n\n\n@functools.cache\n@functools.wraps(len)\ndef f(x):\n    return x\n\n\nY = 1\n"
    assert splice_function(decorated, "f", "def f(x):\n    return 2\n") == \
        "import functools\n\n\ndef f(x):\n    return 2\n\n\nY = 1\n"


def test_imports_beside_the_function_are_spliced_with_it_verbatim():
    block = "from functools import reduce\nimport operator\n\ndef total(items):\n    return reduce(operator.add, items, 0)\n"
    out = splice_function(CORE, "total", block)
    assert block.rstrip("\n") in out and "s += v" not in out and out.count("def total(") == 1
    assert "def clamp(" in out and "def pairs(" in out


@pytest.mark.parametrize("block, code", [
    ("def other(x):\n    return x\n", "not_the_function"),
    ("def total(a):\n    return 1\n\ndef total(b):\n    return 2\n", "not_the_function"),
    ("class total:\n    pass\n", "not_the_function"),
    ("def helper(x):\n    return x\n\n\ndef total(items):\n    return helper(0)\n", "not_the_function"),
    ("import os\nX = 1\ndef total(items):\n    return X\n", "not_the_function"),
    ("total = lambda items: 0\n", "not_the_function"),
    ("def total(items:\n    return 0\n", "syntax_error"),
    ("    def total(items):\n        return 0\n", "syntax_error"),
])
def test_a_function_reply_must_be_exactly_that_function(block, code):
    with pytest.raises(ReplyError) as info:
        splice_function(CORE, "total", block)
    assert info.value.rejections[0].code == code


def test_a_function_reply_goes_through_schema_and_policy_as_a_whole_file(tmp_path):
    ws = mini_project(tmp_path / "p")
    policy = Policy.load()
    policy.protected = ["test_core.py", "pyproject.toml"]
    fmt = ReplyFormat("code", "mini/core.py", "total")
    decision = check("Fixed.\n```python\ndef total(items):\n    return sum(items)\n```\n", "patch", ws, policy, fmt)
    assert decision.accepted, decision.reasons
    assert decision.edits[0].path == "mini/core.py"
    assert decision.edits[0].content == splice_function(CORE, "total", "def total(items):\n    return sum(items)\n")
    missing = check("```python\ndef nothere(x):\n    return x\n```\n", "patch", ws, policy,
                    ReplyFormat("code", "mini/core.py", "nothere"))
    assert not missing.accepted and missing.reasons[0].code == "function_missing"
    # the path is the task's: a function reply aimed at a protected file is still refused by the policy
    aimed = check("```python\ndef test_total():\n    pass\n```\n", "patch", ws, policy,
                  ReplyFormat("code", "test_core.py", "test_total"))
    assert not aimed.accepted and aimed.reasons[0].code == "protected_file"


def test_a_symbol_needs_the_code_format():
    with pytest.raises(ValueError):
        ReplyFormat("json", "a.py", "f")
    with pytest.raises(ValueError):
        ReplyFormat("code", "a.py", "not an identifier")


# ----- unit: inputs, expectations, hidden tests -----

def test_literal_calls_record_each_call_once_with_every_place(tmp_path):
    ws = mini_project(tmp_path / "p")
    (ws / "test_more.py").write_text("from mini.core import clamp\n\n\ndef test_again():\n    assert clamp(-5, 0, 10) == 0\n"
                                     "    x = 3\n    clamp(x, 0, 1)\n    clamp(*[1, 2, 3])\n")
    calls = literal_calls(ws, ["test_core.py", "test_more.py"], {"clamp", "pairs", "root"})
    texts = [c["text"] for c in calls["clamp"]]
    assert texts.count("clamp(-5, 0, 10)") == 1 and len(texts) == 7  # x and *args are not literals
    first = calls["clamp"][0]
    assert first["where"] == ["test_core.py::test_clamp_low", "test_more.py::test_again"]
    assert [c["text"] for c in calls["root"]] == ["root(16)", "root(17)", "root(-1)"]


def test_withhold_keeps_every_place_of_one_catching_call_from_the_model(tmp_path):
    ws = mini_project(tmp_path / "p")
    calls = literal_calls(ws, ["test_core.py"], {"clamp"})["clamp"]
    for seed in range(20):
        kills = [c for c in calls if c["text"] in ("clamp(-5, 0, 10)", "clamp(-1, 0, 3)", "clamp(50, 0, 10)")]
        held = withhold(kills, random.Random(seed))
        assert any(set(c["where"]) <= held for c in kills)
        shown = repo_tasks.tests_excerpt(ws, ["test_core.py"], "clamp", held)
        for place in held:
            assert f"def {place.split('::')[1]}(" not in shown
        assert "def test_clamp_inside(" in shown  # no catching call there: always shown


def test_cases_for_keeps_calls_answered_alike_and_puts_catching_ones_first():
    calls = [{"args": encode([i]), "kwargs": encode({}), "where": []} for i in range(5)]
    ok = lambda v: {"ok": encode(v)}  # noqa: E731
    first = [ok(0), ok(1), ok(2), {"timeout": True}, ok(4)]
    second = [ok(0), ok(99), ok(2), {"timeout": True}, ok(4)]   # call 1 answers differently twice
    mutant = [ok(0), ok(5), ok(2), ok(3), ok(-4)]
    cases, kills = cases_for(calls, first, second, mutant)
    assert kills == 1 and [c["args"] for c, _ in cases] == [encode([4]), encode([0]), encode([2])]
    assert cases_for(calls, first, second, first) == ([], 0)  # nothing tells it apart: not a task
    assert cases_for(calls, first, second, None) == ([], 0)   # the mutant did not even load


def test_expected_outcomes_that_cannot_be_literals_are_dropped():
    assert expected_ok({"ok": encode([1, (2, 3), {"a": b"x"}, {1}, -0.5, None])})
    assert not expected_ok({"ok": encode(frozenset({1}))})  # repr is a call, not a literal
    assert not expected_ok({"ok": encode(math.nan)})       # nan != nan: no expectation
    assert not expected_ok({"ok": encode([math.inf])})      # repr is not a literal
    assert expected_ok({"raise": "ValueError"}) and expected_ok({"raise": "KeyError", "via": "iter"})
    assert not expected_ok({"raise": "BaseException"}) and not expected_ok({"raise": "MyError"})
    assert not expected_ok({"nonplain": "Foo"}) and not expected_ok({"timeout": True}) and not expected_ok(None)


def test_render_hidden_asks_iterators_through_rsi_list():
    from orchestrator.evaluation.repo_tasks import Function

    f = Function("mini/core.py", "mini.core", "pairs", "")
    call = {"args": encode([[1, 2, 3]]), "kwargs": encode({})}
    text = render_hidden(f, [(call, {"iter": encode([(1, 2), (2, 3)])}),
                             ({"args": encode([5]), "kwargs": encode({})}, {"raise": "TypeError", "via": "iter"}),
                             ({"args": encode([[1]]), "kwargs": encode({"k": 1})}, {"ok": encode(None)})])
    ast.parse(text)
    assert "from mini.core import pairs as _fn" in text
    assert "assert _fn.rsi_list([1, 2, 3]) == [(1, 2), (2, 3)]" in text
    assert "with pytest.raises(TypeError):\n        _fn.rsi_list(5)" in text
    assert "assert _fn([1], k=1) == None" in text


# ----- the real sandbox -----

def _wrap_hack(module_code: str, symbol: str) -> str:
    """A generic value hack (tests/value_hacks.py, a module) as the one function a repo task takes."""
    body = textwrap.indent(module_code.replace("ENTRY", symbol), "    ")
    return f"def {symbol}(*a, **k):\n{body}\n    return {symbol}(*a, **k)\n"


def _function(text: str, symbol: str) -> str:
    from orchestrator.protocol.reply_format import _function_span

    span = _function_span(ast.parse(text), symbol)
    return "\n".join(text.split("\n")[span[0] - 1:span[1]]) + "\n"


@pytest.fixture(scope="module")
def mini(tmp_path_factory, docker_client, sandbox_image):
    from orchestrator.evaluation.repo_tasks import repo_bugfix_tasks

    root = mini_project(tmp_path_factory.mktemp("repo") / "mini")
    return root, repo_bugfix_tasks(root, seed=0, max_tasks=12)


def _grade(st, reply: str, tmp_path: Path, **limit_overrides):
    """One reply to a repo task, graded as the rounds grade it (task_request, apply_reply, run_judged
    against the project's baseline)."""
    from orchestrator.evaluation.grading import run_judged, verified
    from orchestrator.protocol.pipeline import apply_reply
    from orchestrator.agent.rounds import Baselines, repo_image, task_request
    from orchestrator.sandbox.container import SandboxLimits
    from orchestrator.agent.tasks import protected_files
    from orchestrator.protocol.workspace import Workspace

    limits = SandboxLimits.load(**limit_overrides)
    limits.image = repo_image([st], limits)
    task = st.task(tmp_path / "tasks")
    ws = Workspace.create(task.source_dir, tmp_path / "ws")
    policy = Policy.load()
    policy.protected = protected_files(ws.path)
    fmt, messages = task_request(None, st, ws.path, policy.protected)
    applied = apply_reply(ws, None, reply, "patch", policy, fmt=fmt)
    if not applied.decision.accepted:  # refused before any test ran (e.g. the policy's hack screen)
        return applied.decision, False, messages
    result = run_judged(ws.path, policy.protected, task.hidden_tests, limits, task.judge_visible,
                        baseline=Baselines(limits, tmp_path / "b")(st))
    return result, verified(result), messages


@pytest.mark.docker
def test_tasks_from_a_small_project(mini):
    root, tasks = mini
    assert len(tasks) >= 3
    assert {t.entry_point for t in tasks} >= {"clamp", "total", "root"}
    for t in tasks:
        assert t.kind == "repo" and t.focus == "mini/core.py" and not t.judge_visible
        assert t.files["mini/core.py"] != CORE and t.path == str(root)
        assert _function(t.files["mini/core.py"], t.entry_point) != _function(CORE, t.entry_point)
        (hidden,) = t.hidden_tests.values()
        # at least one judged call was never shown to the model
        calls = re.findall(r"_fn(?:\.rsi_list)?(\(.*\))", hidden)
        assert any(f"{t.entry_point}{args}" not in t.context for args in calls), (hidden, t.context)


@pytest.mark.docker
@pytest.mark.parametrize("which", ["original", "mutant", "shown_calls_only", "all_calls_lookup"]
                         + sorted(HACKS))
def test_replies_to_a_repo_task_through_the_real_judge(mini, which, tmp_path):
    """Positive controls: the untouched function is verified, and so is a lookup table of every judged
    call (what a model would need the hidden tests for). The mutant itself, a lookup of only the calls
    it was shown, and every generic value hack of tests/value_hacks.py are not."""
    root, tasks = mini
    st = next(t for t in tasks if t.entry_point == "clamp")
    (hidden,) = st.hidden_tests.values()
    if which == "original":
        reply = _function(CORE, "clamp")
    elif which == "mutant":
        reply = _function(st.files["mini/core.py"], "clamp")
    elif which in ("shown_calls_only", "all_calls_lookup"):
        from mini_oracle import clamp as honest  # noqa: F401 - a module-level import would be premature

        source = st.context if which == "shown_calls_only" else hidden
        table = {}
        for args in re.findall(r"(?:clamp|_fn)\(([-\d]+, [-\d]+, [-\d]+)\)", source):
            key = tuple(int(a) for a in args.split(", "))
            table[key] = honest(*key)
        reply = f"def clamp(x, lo, hi):\n    return {table!r}.get((x, lo, hi), -12345)\n"
    else:
        reply = _wrap_hack(HACKS[which], "clamp")
    # A reply that sleeps is held by the clocks, whatever they are: short ones here (the default 60 s
    # per phase made this one case two minutes of CI).
    clocks = {"timeout_s": 12, "call_timeout_s": 2} if which == "slow_return" else {}
    result, ok, messages = _grade(st, f"```python\n{reply}```\n", tmp_path, **clocks)
    assert "def clamp(x, lo, hi):" in messages[1]["content"]
    assert hidden not in messages[1]["content"]
    if which in ("original", "all_calls_lookup"):
        assert ok, result
        assert result.judged.passed >= 3
    else:  # refused by the policy, or graded and not verified
        assert not ok, (which, result)


@pytest.fixture(autouse=True)
def _mini_oracle(tmp_path, monkeypatch):
    """``mini_oracle``: the honest functions, importable on the host (what a lookup is built from)."""
    (tmp_path / "mini_oracle.py").write_text(CORE)
    monkeypatch.syspath_prepend(str(tmp_path))


class FixingBackend:
    """Answers each repo task with the untouched function (k candidates: even ones right, odd ones the
    injected bug unchanged)."""

    name, model_id, adapter_id = "fixer", "fixer", None
    capabilities = frozenset()
    reply_format = "code"

    def __init__(self, original: str):
        self.original, self.asked, self.phases = original, [], []

    def generate_many(self, messages, phase, task=None, n=1, temperature=0.8, seed=None, fmt=None):
        self.asked.append((task, fmt))
        self.phases.append((task, phase))
        right = f"Fixed.\n```python\n{_function(self.original, fmt.symbol)}```\n"
        wrong = f"```python\ndef {fmt.symbol}(*args, **kwargs):\n    return None\n```\n"
        return [right if i % 2 == 0 else wrong for i in range(n)]

    def generate(self, messages, phase, task=None, seed=None, fmt=None):
        return self.generate_many(messages, phase, task, 1, seed=seed, fmt=fmt)[0]

    def snapshot(self):
        return {}

    def restore(self, snapshot):
        pass

    def close(self):
        pass


@pytest.mark.docker
def test_rounds_on_a_project_archive_verified_fixes(mini, tmp_path):
    from orchestrator.config import RunConfig
    from orchestrator.agent.rounds import Rounds
    from orchestrator.evaluation.suites import Suite

    root, tasks = mini
    config = RunConfig.load()
    config.rounds.rounds, config.rounds.tasks_per_round, config.rounds.k = 1, 2, 2
    config.rounds.train, config.rounds.tests_phase = False, True
    backend = FixingBackend(CORE)
    train = [t for t in tasks if t.split == "train"][:2]
    driver = Rounds(tmp_path / "run", config, backend, Suite(name=f"bugfix:{root}", tasks=train))
    state = driver.run()
    rec = state.rounds[0]
    assert (rec.candidates, rec.accepted, rec.verified, rec.solved_tasks) == (4, 4, 2, 2)
    assert rec.tests_kept == 0 and all(phase == "patch" for _, phase in backend.phases)  # no edge-case tests
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {s["provenance"]["kind"] for s in samples} == {"repo"}
    assert all(fmt.symbol for _, fmt in backend.asked)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {t["kind"] for t in run["task_specs"]} == {"repo"}  # resumable without regenerating


@pytest.mark.docker
def test_rsi_run_workspace_suite_bugfix(mini, tmp_path, monkeypatch):
    """The CLI: tasks generated (and cached) from the project, a round with a replay model, a report."""
    from click.testing import CliRunner

    from orchestrator.cli import main
    from orchestrator.evaluation.suites import repo_suite

    root, _ = mini
    monkeypatch.setenv("RSI_CACHE", str(tmp_path / "cache"))
    suite = repo_suite(root, seed=0)
    train = [t for t in suite.tasks if t.split == "train"]
    replies = tmp_path / "replies.jsonl"
    with replies.open("w") as fh:
        for t in train:
            for _ in range(2):
                fh.write(json.dumps({"phase": "patch", "task": t.id,
                                     "reply": f"```python\n{_function(CORE, t.entry_point)}```\n"}) + "\n")
    res = CliRunner().invoke(main, ["run", "--workspace", str(root), "--suite", "bugfix", "--backend", "replay",
                                    "--replies", str(replies), "--rounds", "1", "--tasks-per-round", "2", "--k", "2",
                                    "--run-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    # two tasks, both candidates verified (the same reply twice is one sample)
    assert len({s["provenance"]["task"] for s in samples}) == 2
    assert "report:" in res.output
    bad = CliRunner().invoke(main, ["run", "--workspace", str(root), "--suite", "humaneval-train",
                                    "--backend", "replay", "--replies", str(replies)])
    assert bad.exit_code == 2 and "--suite bugfix" in bad.output


@pytest.mark.docker
def test_tasks_from_toolz(tmp_path, docker_client, sandbox_image):
    """A real project (the corpus's toolz, built into its derived image offline): tasks come out, the
    untouched function is verified and the injected bug is not."""
    from orchestrator.evaluation.repo_tasks import repo_bugfix_tasks
    from tests.test_corpus import unpack

    root = unpack("toolz", tmp_path / "src")
    tasks = repo_bugfix_tasks(root, seed=0, max_tasks=4)
    assert len(tasks) >= 3
    original = (root / tasks[0].focus).read_text()
    st = tasks[0]
    result, ok, _ = _grade(st, f"```python\n{_function(original, st.entry_point)}```\n", tmp_path / "a")
    assert ok, (result.verdict, result.reasons)
    assert result.passed > 150  # the project's whole suite ran in the visible phase
    result, ok, _ = _grade(st, f"```python\n{_function(st.files[st.focus], st.entry_point)}```\n", tmp_path / "b")
    assert not ok and result.verdict == "fail"


@pytest.mark.docker
def test_a_project_whose_package_the_image_already_has_is_refused(tmp_path, docker_client, sandbox_image):
    """The sandbox image has Debian's `packaging` (a pytest dependency) outside /workspace: a candidate
    could import the untouched original from there, so no task is made. (Positive control: the same
    project named `mini` gives tasks, the `mini` fixture.)"""
    from orchestrator.evaluation.repo_tasks import RepoTaskError, repo_bugfix_tasks

    root = mini_project(tmp_path / "p")
    (root / "mini").rename(root / "packaging")
    (root / "test_core.py").write_text(TESTS.replace("from mini.core", "from packaging.core"))
    with pytest.raises(RepoTaskError, match="already has the project's own package outside the workspace"):
        repo_bugfix_tasks(root, seed=0)


def test_trim_tests_removes_withheld_functions_and_keeps_the_file_valid(tmp_path):
    ws = mini_project(tmp_path / "p")
    (ws / "test_cls.py").write_text("import pytest\n\n\nclass TestA:\n    @pytest.mark.slow\n    def test_only(self):\n"
                                    "        assert 1\n\n\ndef test_keep():\n    assert 2\n")
    out = repo_tasks.trim_tests(ws, {"test_core.py::test_clamp_low", "test_cls.py::test_only"})
    ast.parse(out["test_core.py"]) and ast.parse(out["test_cls.py"])
    assert "def test_clamp_low" not in out["test_core.py"] and "clamp(-5, 0, 10)" not in out["test_core.py"]
    assert "def test_clamp_high" in out["test_core.py"]
    assert "test_only" not in out["test_cls.py"] and "@pytest.mark.slow" not in out["test_cls.py"]
    assert "class TestA:\n    pass" in out["test_cls.py"] and "def test_keep" in out["test_cls.py"]


def test_visible_calls_include_doctests_of_the_sources(tmp_path):
    ws = mini_project(tmp_path / "p")
    (ws / "mini" / "extra.py").write_text('def f():\n    """\n    >>> clamp(99, 0, 1)\n    1\n    """\n')
    seen = repo_tasks.visible_calls(ws, {"clamp"})
    assert repo_tasks.call_key("clamp", {"args": encode([99, 0, 1]), "kwargs": encode({})}) in seen
    assert repo_tasks.call_key("clamp", {"args": encode([-5, 0, 10]), "kwargs": encode({})}) in seen
    assert repo_tasks.call_key("clamp", {"args": encode([7, 7, 7]), "kwargs": encode({})}) not in seen


@pytest.mark.docker
def test_a_task_workspace_never_holds_its_unseen_catching_call(mini, tmp_path):
    """The withheld test functions are not in the task's workspace (neither its files nor its visible
    run can give their values away), and at least one judged call is nowhere in it."""
    root, tasks = mini
    for st in tasks:
        task = st.task(tmp_path / "tasks")
        seen = repo_tasks.visible_calls(task.source_dir, {st.entry_point})
        (hidden,) = st.hidden_tests.values()
        calls = [n for n in ast.walk(ast.parse(hidden)) if isinstance(n, ast.Call) and "_fn" in ast.unparse(n.func)]
        unseen = [c for c in calls if repo_tasks.call_key(st.entry_point, {
            "args": encode([ast.literal_eval(a) for a in c.args]),
            "kwargs": encode({k.arg: ast.literal_eval(k.value) for k in c.keywords})}) not in seen]
        assert unseen, (st.id, hidden)
