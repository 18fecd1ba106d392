"""Distil a DistillDIFT student from unlabeled images (multi-teacher: DINOv2 + a diffusers UNet)."""
