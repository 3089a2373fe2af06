"""Jobs: how a stage's work is planned, run and finished, whatever the stage.

  state       every name under an output's state directory (StateLayout) and the one answer to
              "is this a finished scored directory?" (ScoredDir)
  units       work units: files, and parts of big files
  processes   the processes of one job (torchrun's process group, or one process)
  engines/    run a stage's units: in this process or torchrun's (local), or on Ray workers (ray)
  slurm       sbatch scripts rendered from templates/; node_parts answers on the cluster whether a
              node part of a score job is finished

No engine knows a stage: a stage hands the engines its per-unit work.
"""
