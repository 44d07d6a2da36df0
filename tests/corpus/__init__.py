"""The bad-input corpus: inputs intake must refuse cleanly (see docs/bad-input.md)."""
