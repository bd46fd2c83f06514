"""The one compiled piece of pyxen: the vCPU exit loop (src/pyxen/arch/x86/_vcpuloop.c).
Optional: without a compiler the install still succeeds and machine.py runs its pure-Python
loop. Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pyxen.arch.x86._vcpuloop", ["src/pyxen/arch/x86/_vcpuloop.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True)])
