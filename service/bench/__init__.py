"""`titok bench`: the service benchmarked against the raw engine (bench), its request formats
(bench_formats) and the load generator (loadgen)."""
