"""Every security rule of the policy file is load-bearing: removing any one of them makes a check
fail (a mutation test of ``policies/default.toml``), and every rule has exactly one source (the
decoder, the prompts and the protected-file check read the policy, not copies of it)."""

import re
import tomllib
from pathlib import Path

import pytest

from orchestrator.models import backends
from orchestrator.protocol import prompts
from orchestrator.protocol.policy import POLICIES_DIR, Policy, check_edits
from orchestrator.protocol.schema import FileEdit
from orchestrator.agent.tasks import protected_files

SOURCE = tomllib.loads((POLICIES_DIR / "default.toml").read_text())


def example_name(glob: str) -> str:
    return glob.replace("*", "x")


def rule_failures(policy: Policy, tmp: Path) -> list[str]:
    """What the real policy guarantees, checked against ``policy``: an empty list means it holds."""
    failures = []
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    for glob in SOURCE["patch"]["deny_globs"]:
        name = example_name(glob)
        (ws / name).write_text("x = 1\n")
        decision = check_edits([FileEdit(path=name, content="x = 1\n")], "patch", ws, policy)
        if decision.accepted:
            failures.append(f"patch may write {name}")
    if check_edits([FileEdit(path="run.sh", content="x = 1\n")], "patch", ws, policy).accepted:
        failures.append("patch may write a non-Python file")
    for d in SOURCE["patch"]["deny_dirs"]:
        decision = check_edits([FileEdit(path=f"{d}/helper.py", content="x = 1\n")], "patch", ws, policy)
        if decision.accepted:
            failures.append(f"patch may write under {d}/")
    protected = set(protected_files(ws, policy))
    for glob in SOURCE["patch"]["deny_globs"]:
        if example_name(glob) not in protected:
            failures.append(f"{example_name(glob)} is not protected")
    for name in SOURCE["shadow"]["runner"] + ["json", "os"]:
        decision = check_edits([FileEdit(path=f"{name}.py", content="x = 1\n")], "patch", ws, policy)
        if decision.accepted:
            failures.append(f"{name}.py may shadow a module")
    hack = "import sys\n\ndef f():\n    return sys._getframe(1)\n"
    if check_edits([FileEdit(path="solution.py", content=hack)], "patch", ws, policy).accepted:
        failures.append("the hack screen lets frame introspection through")
    name = example_name(SOURCE["tests"]["pattern"])
    if not check_edits([FileEdit(path=name, content="def test_a():\n    pass\n")], "tests", ws, policy).accepted:
        failures.append(f"tests phase refuses {name}")
    if check_edits([FileEdit(path="helper.py", content="x = 1\n")], "tests", ws, policy).accepted:
        failures.append("tests phase may write source")
    return failures


def test_the_policy_holds(tmp_path):
    assert rule_failures(Policy.load(), tmp_path) == []


def _mutations():
    out = []
    for glob in SOURCE["patch"]["deny_globs"]:
        out.append((f"patch.deny_globs-{glob}", "patch", "deny_globs", glob))
    for d in SOURCE["patch"]["deny_dirs"]:
        out.append((f"patch.deny_dirs-{d}", "patch", "deny_dirs", d))
    for name in SOURCE["shadow"]["runner"]:
        out.append((f"shadow.runner-{name}", "shadow", "runner", name))
    out.append(("shadow.stdlib", "shadow", "stdlib", None))
    out.append(("screen.enabled", "screen", "enabled", None))
    out.append(("tests.pattern", "tests", "pattern", None))
    out.append(("patch.allow_suffixes", "patch", "allow_suffixes", ".py"))
    return out


@pytest.mark.parametrize("label,section,key,item", _mutations(), ids=[m[0] for m in _mutations()])
def test_removing_any_rule_is_caught(label, section, key, item, tmp_path):
    data = tomllib.loads((POLICIES_DIR / "default.toml").read_text())
    value = data[section][key]
    if key == "allow_suffixes":
        data[section][key] = [""]  # no suffix rule: every name ends with ""
    elif isinstance(value, list):
        data[section][key] = [v for v in value if v != item]
    elif isinstance(value, bool):
        data[section][key] = not value
    else:
        data[section][key] = "*.py"  # the tests phase may write anything
    weakened = Policy(**data)
    assert rule_failures(weakened, tmp_path), f"removing {label} went unnoticed"


def test_generated_test_pattern_has_one_source():
    """The decoder's path pattern and the prompt are derived from the policy's pattern."""
    pattern = Policy.load().tests.pattern
    prefix = pattern.split("*")[0]
    assert prefix in backends.decoding_schema("tests")["$defs"]["FileEdit"]["properties"]["path"]["pattern"]
    assert pattern in prompts.tests_format()
    # No other spelling of the prefix in the host's code: it comes from the policy. Code that runs
    # inside the sandbox image (stdlib only, no policy file there) keeps copies, checked equal below.
    for path in Path("orchestrator").rglob("*.py"):
        if path.parent.match("sandbox/runner"):
            continue
        text = path.read_text()
        assert not re.search(r"[\"']" + re.escape(prefix), text), f"{path} spells {prefix!r} itself"


def test_in_image_copies_of_the_rules_equal_the_policy():
    from orchestrator.sandbox.runner import baseline

    policy = Policy.load()
    assert baseline.GENERATED_GLOB == policy.tests.pattern
    assert set(baseline.PROTECTED_GLOBS) <= set(policy.patch.deny_globs)
    assert set(baseline.PROTECTED_DIRS) == set(policy.patch.deny_dirs)
