"""Tests of the BLE adapters: the virtual strap and its bleak backend."""
