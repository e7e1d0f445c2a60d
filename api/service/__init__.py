"""The save service: a save request becomes a spec in the spool plus a pinned batch job,
and its status is read back from accounting joined with the spool (every front door
goes through :class:`api.service.saves.SaveService`)."""
