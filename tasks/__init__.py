"""Prefect tasks over plain functions, one module per pipeline stage."""
