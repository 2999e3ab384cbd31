"""Data for the lessons: the offline data sets, text pipelines (lesson 02), images (lesson 03)."""

from ftlab.data.images import ImageTensors
from ftlab.data.offline import lfw_faces, textures, toy_reviews
from ftlab.data.text import load_text_dataset, padding_waste, text_loaders, tokenize

__all__ = ["ImageTensors", "lfw_faces", "textures", "toy_reviews"]
__all__ += ["load_text_dataset", "padding_waste", "text_loaders", "tokenize"]
