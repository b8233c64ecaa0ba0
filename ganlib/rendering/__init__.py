"""What people look at: ``pictures`` (grids, PNG/GIF, pure), ``gallery`` (what a run's gallery/ holds),
``plots``, ``summary`` (summary.json / summary.md) and ``report_html`` (the self-contained report.html)."""
