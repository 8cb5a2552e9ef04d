"""Scenario files, their schema, the engines that run them and the ``fedsigma`` CLI."""
