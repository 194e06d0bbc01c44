"""The daemon runtime: what every FUSE daemon and service process of a run stands on (the daemon
loop and its control socket, the service processes, a run's lifecycle, directory and cgroup, the
mount table, the FUSE connections and requests). Nothing here knows a filesystem personality, a
scenario or the watchdog."""
