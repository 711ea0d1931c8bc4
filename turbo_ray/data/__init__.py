"""Corpus parsing (IEMOCAP and the generated demo corpus), Parquet shards and the Ray Data
pipeline."""
