"""aujax: train facial Action Unit detectors and verify their decisions with LRP."""
