"""Data: readers of the supported data set formats and the seeded synthetic generator."""
