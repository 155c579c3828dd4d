"""Dataset-level findings over a finished run's maps: class evidence, shortcuts proved by intervention,
strategies, and comparisons of two runs."""
