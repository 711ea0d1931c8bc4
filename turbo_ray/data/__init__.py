"""Corpora (an IEMOCAP release, a folder with a metadata.csv, the generated demo corpus) read into
one manifest, cut into outer folds, written to Parquet shards and fed through Ray Data."""
