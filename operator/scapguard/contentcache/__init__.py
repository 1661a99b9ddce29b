"""SCAP content the operator fetches once, verifies, stores by sha256 and serves to scanners."""
