"""The entry points: Prefect flows and their command lines (``python flows/train.py --help``).

Importing anything from here imports ``tasks`` first: it puts the project's Prefect defaults (no
analytics, ganlib's logger in the flow logs) into the environment, where they must be before
prefect itself is imported. A script (``python flows/train.py``) gets them through its first
project import, ``from flows.cli import ...``, which each one makes before importing prefect.
"""

import tasks  # noqa: F401
