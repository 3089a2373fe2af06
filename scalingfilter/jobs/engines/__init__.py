"""Engines that run a job (`scalingfilter.jobs.job.Job`: a stage's per-unit work plus the job's state machine;
or `scalingfilter.jobs.rows.RowsJob`, whose units compute array rows: diversity's embedding):
`local` (one process, or the processes torchrun started) and `ray` (a Ray cluster; `ray_worker` holds its
workers and work items).

Every engine runs the same `Job` steps (plan, do a unit into temporary part files and mark it done, assemble,
summarise), so their outputs are byte-identical and a job started with one engine can be finished with
another. No engine knows a stage.
"""
