"""Lightning callbacks: checkpoints, sample grids, evaluation during training, monitors."""
