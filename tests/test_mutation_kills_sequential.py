"""Property tests aimed at mutants that survived scripts/mutation.py's sequential target (issue 24)."""
