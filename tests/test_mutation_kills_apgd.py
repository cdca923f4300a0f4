"""Property tests aimed at mutants that survived scripts/mutation.py's apgd target (issue 24)."""
