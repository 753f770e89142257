"""Tools above the runtime packages: training, benchmarks and fixture generators (nothing at run time imports these)."""
