"""What the gateway tells its operators: status, log repetition, logging setup, Prometheus metrics."""
