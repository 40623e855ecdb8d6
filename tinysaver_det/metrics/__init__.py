"""
COCO box metrics as plain numpy, below every other layer: the model's live oracle and training
targets (modeling) and every evaluation, sweep and cache (evaluation, engine) score detections with
the same code. Nothing here imports the rest of the package.
"""
