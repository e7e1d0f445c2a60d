"""The shared core every imgsave layer uses: the typed errors and the one subprocess runner.

Only what every package needs belongs here, and nothing here imports another imgsave
package (``api``, ``builder_jobs``, ``registry``, ``scheduler_glue``, ``site_configs``):
``core`` is the leaf of the dependency graph, so any layer may import it without a circle.
"""
