"""What runs on the node: the save job's unprivileged half and the save itself."""

import os

# As in api/__init__.py: no scan for pydantic plugins (~25 ms of the job's start-up).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
