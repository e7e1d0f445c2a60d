"""imgsave's front doors: the CLI, the REST API and portal, reports, the save service, and
the node's privileged entry (``api.node_entry``)."""

import os

# pydantic scans every installed distribution's entry points for plugins the first time
# a model is built (~25 ms of each command's and the node entry's start-up); imgsave
# uses none. A site's own setting wins. (pydantic's docs: "Pydantic plugins".)
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
