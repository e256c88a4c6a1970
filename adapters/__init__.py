"""siibra_anchor.adapters."""
