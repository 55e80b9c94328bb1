"""Latency and memory profiling of exported artifacts on the runtime that will run them.

``probe.py`` is a self-contained script (standard library, numpy and the runtime; nothing of edgehybrid)
that loads one artifact in a fresh process and measures it. It runs as a local subprocess, so that peak
memory belongs to this model alone, or is streamed over SSH to a device's own Python. ``report.py``
renders the results as JSON, Markdown and a self-contained HTML page with plots.
"""
