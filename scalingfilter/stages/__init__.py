"""Stages: the jobs a user runs (score, select, diversity, distill, train, evaluate, report), each over the
engines, models and I/O below it. Being moved here one at a time (issue: package layout)."""
