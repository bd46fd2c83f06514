"""The domain process (VMM): one per domain, started by hostd as `python -m pyxen.vmm`.

Contract: docs/internals.md, "The VMM (domain process) contract".
"""
