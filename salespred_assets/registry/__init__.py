"""The model registry: versions stored in MongoDB (GridFS artifacts, one document each, one pointer), the promotion
gate's rule and thresholds, promotion and rollback by hand, and the registry as SQL reporting tables."""
