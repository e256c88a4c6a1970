"""siibra_anchor.viewer."""
