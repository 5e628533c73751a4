"""The interactive dashboard over a finished run: ``arithinterp dashboard RUN_DIR``.

``create_app(run_dir)`` returns a :class:`dash.Dash` app over a report directory, a run
directory (``runs/<name>/`` with ``report/`` inside) or a directory of runs.
"""

from arithinterp.dashboard.app import create_app
from arithinterp.dashboard.data import DashboardError, Report, RunSet, find_reports

__all__ = ["DashboardError", "Report", "RunSet", "create_app", "find_reports"]
