"""The fedsigma Flower ClientApp: calibrated probe gradients and a training gradient."""
