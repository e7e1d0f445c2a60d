"""The ``imgsave`` command line: local (through the service) or ``--api`` (through the
REST API)."""

import os

# pydantic looks for plugins in every installed distribution's entry points the first
# time a model is built (~25 ms of each command's start-up); imgsave uses none. An
# explicit setting of the site's wins. (pydantic docs: "Pydantic plugins".)
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
