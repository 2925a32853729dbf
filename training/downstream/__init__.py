"""Downstream training (paper §3.3): classification / segmentation heads, linear probing and fine-tuning."""
