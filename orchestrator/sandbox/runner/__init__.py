"""Code that runs inside the sandbox container (stdlib + pytest only).

Copied into the image as the top-level package ``rsi_sandbox``; the host imports the
same files as ``orchestrator.sandbox.runner`` so both sides grade identically.
"""
