"""The fedsigma ServerApp and GradCovStrategy, a reusable Flower Message-API strategy."""
