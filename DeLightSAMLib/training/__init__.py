"""Fine-tuning, distillation and evaluation on researchers' own data (torch; no slicer)."""
