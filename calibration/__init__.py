"""Calibration data sources and the INT8 quantization plan derived from them."""
