"""The campaign report (`python -m pipeline report SPEC [--html FILE]`): summary.py reads the results file and
aggregates it in polars, text.py prints it for a terminal, html.py and charts.py make the self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

from pipeline import objects
from pipeline.outputs import Kind, Output, check_outputs
from pipeline.report.summary import CampaignReport, read_results, summarize_results
from pipeline.results import CsvOptions
from pipeline.spec import CampaignSpec

__all__ = ["CampaignReport", "check_report_path", "report_campaign"]


def report_campaign(spec: CampaignSpec) -> CampaignReport:
    """The aggregates of the campaign's results file (output.results)."""
    path = spec.output.results
    objects.fetch(path, label="output.results", missing_ok=True)  # results in a bucket are read from a local copy
    results = read_results(path, separator=CsvOptions.of(spec).separator)
    return summarize_results(results, campaign=spec.name, results_path=objects.display(path))


def check_report_path(spec: CampaignSpec, html: Path) -> None:
    """Refuse an --html path that is the spec, the input or the results file (checked before anything is read)."""
    inputs = [
        ("input.path", spec.input.path),
        ("the job spec", spec.spec_path),
        ("output.results", spec.output.results),
    ]
    check_outputs(inputs, [Output("--html", html, Kind.OWN)])
