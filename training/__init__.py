"""siibra_anchor.training."""
