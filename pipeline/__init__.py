"""TeachCLIP distillation as two offline stages: cached teacher targets, then student training."""

__version__ = "0.1.0"
