"""Property tests aimed at mutants that survived scripts/mutation.py's objectives target (issue 24)."""
