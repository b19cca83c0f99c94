"""How many CPUs this process may use, for the defaults of every thread and process count.

`os.cpu_count()` is the machine's: in a container or a Kubernetes pod with a CPU limit, in a cpuset or under
`taskset`, it counts cores the process cannot run on, and threads sized by it oversubscribe the cores it has
(each model call's torch threads then wait on each other's barriers).
"""

from __future__ import annotations

import functools


@functools.cache
def available_cpus() -> int:
    """The CPUs this process may use (>= 1): the least of the machine's count, the process's CPU affinity
    (taskset, a cpuset) and its cgroup CPU quota rounded up (a container's `--cpus`, a pod's `limits.cpu`; cgroup
    v2 `cpu.max` or v1 `cpu.cfs_quota_us`), as joblib's `cpu_count()` reads them (it also honours the environment
    variable LOKY_MAX_CPU_COUNT). Read once per process."""
    from joblib import cpu_count  # imported here: about 0.15 s, paid only by what sizes threads by the CPUs

    return max(1, int(cpu_count()))
