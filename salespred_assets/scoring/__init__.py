"""Scoring outside a full refresh: online (a few opportunities at a time, for the seller app) and in batches
(the new-opportunity sensor's plan, one batch's run)."""
