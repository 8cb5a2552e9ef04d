"""fedsigma's engines: inline (in-process), simulation (Ray) and deployment (SuperLink + SuperNodes)."""
