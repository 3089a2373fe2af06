"""Job scripts for clusters: `slurm` renders the sbatch scripts of `scalingfilter slurm` from the templates in
`templates/`; `node_parts` answers, on the cluster, whether a node part of a score job is finished."""
