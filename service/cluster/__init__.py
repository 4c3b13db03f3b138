"""Several serving processes on one machine: the supervising parent, the workers it forks,
and what the workers share (a run directory: status board, metrics, shared limits)."""
