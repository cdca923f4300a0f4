"""Evaluation: reading result files, metrics, summary tables and plots.

``read_results`` reads certify/predict result files (ours with their JSON sidecar, or
Cohen et al.'s originals); the metric functions work on the returned ``Results``;
``summary_table`` / ``analyze_files`` build the table that ``smoothguard analyze`` prints,
and ``plot_certified_accuracy`` draws the certified-accuracy curves (matplotlib is
imported only when a plot is drawn).
"""

from smoothguard.evaluation.analysis import (
    ABSTAIN,
    DEFAULT_RADII,
    TABLE_FORMATS,
    Column,
    Results,
    ResultsFileError,
    SummaryRow,
    SummaryTable,
    abstention_rate,
    analyze_files,
    average_certified_radius,
    certified_accuracy,
    certified_accuracy_lower_bounds,
    certified_count,
    clean_accuracy,
    latex_escape,
    legend,
    legends,
    mean_time,
    parse_time,
    read_results,
    read_sidecar,
    render_table,
    run_r_max,
    sidecar_path,
    summary_table,
    total_samples,
)
from smoothguard.evaluation.plots import plot_certified_accuracy

__all__ = [
    "ABSTAIN",
    "DEFAULT_RADII",
    "TABLE_FORMATS",
    "Column",
    "Results",
    "ResultsFileError",
    "SummaryRow",
    "SummaryTable",
    "abstention_rate",
    "analyze_files",
    "average_certified_radius",
    "certified_accuracy",
    "certified_accuracy_lower_bounds",
    "certified_count",
    "clean_accuracy",
    "latex_escape",
    "legend",
    "legends",
    "mean_time",
    "parse_time",
    "plot_certified_accuracy",
    "read_results",
    "read_sidecar",
    "render_table",
    "run_r_max",
    "sidecar_path",
    "summary_table",
    "total_samples",
]
