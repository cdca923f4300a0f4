"""Property tests aimed at mutants that survived scripts/mutation.py's adaptive target (issue 24)."""
