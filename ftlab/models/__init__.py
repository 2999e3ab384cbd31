"""Models (lessons 02, 03): classifiers from a checkpoint; a model as an ordered list of blocks."""
