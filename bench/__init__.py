"""cryo's benchmarks: the gRPC workloads W1-W5 against peer libraries, and their report.

`python -m bench` runs them (see `bench.__main__`). Nothing here is imported by
cryo itself; the package only measures it.
"""
