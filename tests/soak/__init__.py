"""The soak: a real topology under steady load with faults on a seeded schedule, then a checker.

    python -m tests.soak --minutes 3 [--seed N] [--stream kinesis|embedded] [--warehouse postgres|mysql]

`schedule` draws the faults from the seed (same seed, same schedule), `topology` runs the
processes and proxies and injects each fault, `load` is the load generator (its own process),
`checker` compares what the generator was told against what the warehouse holds, and `scenario`
ties them together. The exit status is 0 only when nothing acknowledged was lost or doubled.
"""
