"""pyxen: the Xen hypervisor, rewritten in Python on top of Linux KVM."""

__version__ = "0.1.0"

# The Xen ABI pyxen implements (Xen 4.17's public headers).
XEN_MAJOR = 4
XEN_MINOR = 17
XEN_EXTRAVERSION = ".0"
