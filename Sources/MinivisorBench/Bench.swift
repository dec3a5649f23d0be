// Benchmarks live here (see BenchmarkSuite).
