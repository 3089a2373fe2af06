"""Engines that run a score job on a distributed system (the local/torchrun engine is `pipeline.ScoreJob.run`).

Every engine runs the same `pipeline.ScoreJob` steps (plan, score a unit into temporary part files and mark
it done, assemble, summarise), so their outputs are byte-identical and a job started with one engine can be
finished with another.
"""
