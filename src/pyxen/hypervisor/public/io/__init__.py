"""ctypes mirrors of xen/io/*.h: the shared-ring protocols of the split drivers."""
