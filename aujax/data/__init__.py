"""Data stage: face records from the synthetic generator, real datasets and manifests."""
