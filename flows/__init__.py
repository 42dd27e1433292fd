"""Prefect flows of spectroflow; deployments point at these modules."""
