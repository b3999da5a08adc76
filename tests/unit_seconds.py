"""Seconds per scheduling unit (tests/conftest.py ``work_unit``) from the JUnit report of a whole
``make test`` (build/test-report.xml): ``make test-times`` writes tests/unit_seconds.json, which the
scheduler reads to send the longest units first. A missing or stale entry only costs balance."""

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def unit_seconds(report: Path) -> dict:
    totals: dict = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        unit = props.get("work_unit")
        if unit:
            totals[unit] += float(case.get("time") or 0)
    return {unit: round(sec, 1) for unit, sec in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    report = Path(argv[1]) if len(argv) > 1 else HERE.parent / "build" / "test-report.xml"
    if not report.exists():
        print(f"test-times: no report at {report}: run `make test` first", file=sys.stderr)
        return 2
    table = unit_seconds(report)
    if not table:
        print(f"test-times: {report} has no work_unit properties (an older report?)", file=sys.stderr)
        return 2
    (HERE / "unit_seconds.json").write_text(json.dumps(table, indent=0) + "\n")
    print(f"test-times: {len(table)} units, {sum(table.values()):.0f} s of tests -> tests/unit_seconds.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
