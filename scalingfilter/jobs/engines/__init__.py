"""Engines that run a job (`scalingfilter.jobs.job.Job`: a stage's per-unit work plus the job's state machine):
`local` (one process, or the processes torchrun started) and `ray` (a Ray cluster; `ray_worker` holds its
workers and work items). `ray_embed` spreads diversity's embedding over Ray workers.

Every engine runs the same `Job` steps (plan, do a unit into temporary part files and mark it done, assemble,
summarise), so their outputs are byte-identical and a job started with one engine can be finished with
another. No engine knows a stage.
"""
