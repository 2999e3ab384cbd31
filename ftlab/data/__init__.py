"""Data for the lessons: the offline data sets, text pipelines (lesson 02), images (lesson 03)."""

from ftlab.data.images import (
    BatchAugment,
    ImageTensors,
    Preprocessing,
    compute_features,
    eval_transform,
    image_loaders,
    load_image_dataset,
    train_transform,
    weights_preprocessing,
)
from ftlab.data.offline import lfw_faces, textures, toy_reviews
from ftlab.data.text import load_text_dataset, padding_waste, text_loaders, tokenize

__all__ = ["ImageTensors", "lfw_faces", "textures", "toy_reviews"]
__all__ += ["load_text_dataset", "padding_waste", "text_loaders", "tokenize"]
__all__ += ["BatchAugment", "Preprocessing", "compute_features", "eval_transform", "image_loaders"]
__all__ += ["load_image_dataset", "train_transform", "weights_preprocessing"]
