"""vitserve benchmarks: a load generator and the five comparisons of issue 5 (`vitserve-bench`).

Modules: stats (percentiles, stability), payloads (prebuilt request bodies), loadgen (closed/open
loop), overhead (the generator's own ceiling), procs (servers started and stopped by PID),
inproc (raw ORT and PyTorch eager timing), models (benchmark models built with export/),
variants / ceiling / peers / gemm / int8 (the comparisons), report and summary (JSON, markdown,
PNG, BENCHMARKS.md), cli (the entry point).
"""
