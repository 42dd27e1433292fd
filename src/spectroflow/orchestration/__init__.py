"""Prefect tasks, the Dask runner and worker setup, log forwarding and artifacts: the layer
between the flows and the library (which never imports Prefect)."""
