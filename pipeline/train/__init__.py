"""Training: the loop written once over the backend contract, and one cell over its seeds."""
