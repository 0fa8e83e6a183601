"""KFP v2 pipelines: the experiment pipeline (a segment of rounds) and the benchmark grid."""
