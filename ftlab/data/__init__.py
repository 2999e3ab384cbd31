"""Data for the lessons: batches, text (lesson 02), images (lesson 03), the offline data sets."""
