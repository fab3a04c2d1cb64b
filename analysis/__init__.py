"""Per-token teacher–student divergence along rollouts: tables, aggregates and figures.

``logs`` reads run directories (lazily, read only); ``table`` turns rollout records into one row per token;
``aggregate`` computes divergence statistics from that table; ``figures`` plots them; ``score`` scores any
student's rollouts with any teacher on demand; ``divergence`` is ``xopd-eval divergence``.
"""

# first divergence: the first token whose advantage (teacher lp - student lp) falls below this, i.e. the
# teacher finds it at least e times less likely than the student does
DEFAULT_THRESHOLD = -1.0
