"""Quality measurements of the intention knowledge (`miko-stream eval ...`): figures, not assertions."""
