"""The report: a static folder (`index.html`, `data/`, `thumbs/`) that a person opens from disk to
check what a run found and removed. See `report.build.write_report`."""

from imagesieve.report.build import write_report

__all__ = ["write_report"]
