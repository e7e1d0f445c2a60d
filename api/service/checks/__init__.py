"""``imgsave check``: small checks of a site, a node or the portal host, each returning a
typed :class:`CheckResult` (OK, or what is wrong and how to fix it). See docs/check.md."""
