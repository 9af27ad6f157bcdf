"""hrvstream: heart rate variability from BLE chest straps to the clinic."""

__version__ = "0.1.0"
