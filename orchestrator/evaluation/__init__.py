"""Evaluation: the reward rule, suites of tasks, benchmarks and reports.

grading.py (the reward rule and one graded attempt), suites.py (task suites: HumanEval splits,
repo bug-fix tasks from repo_tasks.py), humaneval.py and lm_eval_suite.py (held-out evaluation),
report.py and rounds_report.py (what a run did, with intervals).
"""
