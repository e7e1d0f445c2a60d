"""The REST API under ``/api/v1`` and the web portal at ``/`` (Flask), and ``imgsave
serve`` / ``imgsave token``."""
