"""Quantization of bundles (INT8 / FP8 / INT4 Q/DQ). Not implemented yet: the quantization issue adds it.

The bundle contract already records a precision and a quantization scheme per graph (contract.GraphEntry), so a
quantized bundle will run through the same runtime unchanged.
"""
