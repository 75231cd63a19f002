"""Small students distilled from intention knowledge (MIKO's downstream use): a sarcasm classifier.

Training, the image-text auxiliary losses (ITC/ITM, Sánchez Villegas et al. 2024), saving and scoring live here,
below the graph, so that the graph's optional ``classify`` node can load a saved student without importing the
application. Nothing here knows about Kafka.
"""
