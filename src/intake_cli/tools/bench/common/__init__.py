"""What every benchmark shares, and nothing any one of them owns.

- `cpu`: CPU time from /proc (the machine's, a process's, a process tree's, a cluster's);
- `pgbench`: a throwaway DB1 with intake's schema and the baselines, and pgbench runs on it;
- `events`: throwaway clusters and events, `intake serve` and `intake drain` as subprocesses;
- `results`: the one result shape (`Target`), the JSON under benchmarks/results, the
  markdown of targets and ratios, the options every command takes.
"""
