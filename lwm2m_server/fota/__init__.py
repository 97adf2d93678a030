"""Firmware over the air: the CoAP file server for pull, the block-wise push driver, and the update service."""
