"""Everything written to disk: overlays, raw maps, the manifest and the summary."""
