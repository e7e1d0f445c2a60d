"""The PBS Pro backend: ``commands`` (argv builders and submit checks), ``parse`` (qsub,
qstat and pbsnodes output), ``logs`` (tracejob and the accounting log),
``metadata_file`` (the request metadata beside the job script), ``backend``
(:class:`~scheduler_glue.pbs.backend.PbsScheduler`, the hooks only)."""
