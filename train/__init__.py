"""Training, sampling and evaluation entry points (run with accelerate launch / python)."""
