"""Lightning callbacks and evaluation: checkpoints, sample grids, metrics, scorers."""
