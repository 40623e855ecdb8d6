"""Evaluation: per-image quality, fast COCO metrics, routing evaluation, calibration."""
