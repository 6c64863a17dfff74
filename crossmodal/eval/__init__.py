"""Evaluation: metrics, linear probes, kNN and segmentation transfer."""
