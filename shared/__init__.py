"""fedsigma's pure maths: calibration, estimators, preconditioners, data, metrics.

Nothing in this package imports Flower: every function takes and returns numpy
arrays and can be tested on its own.
"""
