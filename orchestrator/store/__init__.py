"""Store: what a run keeps on disk.

audit.py (the append-only audit log of every reply), audit_view.py (reading it), archive.py (the
SFT samples), telemetry.py (reward-hacking counts recomputed from the audit log).
"""
