"""Property tests aimed at mutants that survived scripts/mutation.py's projection target (issue 24)."""
