"""Sandbox: where a workspace's tests run, and how the result is graded.

interface.py is the seam (``Sandbox`` ABC, providers registered by name: docker_provider, pool,
ray_provider, fake); container.py creates the hardened container (every limit from
policies/sandbox.toml) and grades the authenticated evidence on the host; runner/ is the code the
sandbox image carries (supervisor, grader, out-of-process judge); evidence.py keeps each run's
evidence re-gradable offline; images.py and project_image.py build the images.
"""
