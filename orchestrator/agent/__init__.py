"""Agent: the self-improvement loop and the rounds that drive it.

loop.py (write -> test -> reflect -> improve on one task, archiving verified successes), rounds.py
(k candidates per task over a suite, then a training burst and the gate), tasks.py (what a task is),
state.py (the resumable run state), mutation.py (the mutation gate on generated tests), plateau.py
(stopping rules).
"""
