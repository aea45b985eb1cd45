"""Figures and reports: case collection (:class:`ReportCases`), PDF pages, summaries, plots."""

from medcnn.report.cases import ReportCases

__all__ = ["ReportCases"]
