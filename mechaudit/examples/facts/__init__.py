"""Embedded example 'facts': a tiny next-token transformer that stores synthetic subject -> attribute facts, the
planted example of ``mechaudit edit --rome`` (causal tracing, then a rank-one edit of one fact)."""
