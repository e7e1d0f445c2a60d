"""The Slurm backend: ``commands`` (argv builders), ``parse`` (parsers of the output),
``backend`` (:class:`~scheduler_glue.slurm.backend.SlurmScheduler`, the hooks only)."""
