"""The evaluation wing: pass@k / maj@k estimators, benchmark loading, the runner, reports."""
