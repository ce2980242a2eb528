"""Serving and promotion: score.py (the inference server's entry script), `slmops serve`, `slmops promote`,
managed online endpoint specs (specs/) and the local endpoint router."""
