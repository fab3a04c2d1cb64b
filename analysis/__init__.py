"""Per-token teacher–student divergence along rollouts: tables, aggregates and figures."""
