"""The live dashboard of ``serve``: page, SSE stream, and the figures behind them."""

from miko_stream.dashboard.app import Dashboard, DashboardConfig, mount_dashboard

__all__ = ["Dashboard", "DashboardConfig", "mount_dashboard"]
