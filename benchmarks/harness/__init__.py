"""What the serving benchmarks share: server processes, wrk, /proc readings and sampling."""
