"""The data: which datasets exist, how they are fetched, read and split."""
