"""What analysts run over a run's outputs: DuckDB queries over the Parquet datasets."""
