"""Evaluation: metrics over judged responses (`metrics`) and the run report (`report`)."""
