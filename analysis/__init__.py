"""Looking inside SparseCut: contributions, attention maps, attributions, pattern diagrams, FLOPs and benchmarks."""
