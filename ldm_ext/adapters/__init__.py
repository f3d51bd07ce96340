"""Trainable modules that turn identity features into conditioning."""
