"""The ``imgsave`` command line: local (through the service) or ``--api`` (through the
REST API)."""
