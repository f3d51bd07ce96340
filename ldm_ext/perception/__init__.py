"""Perception shared by data preparation, training views and generation pipelines."""
