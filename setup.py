"""Build of the optional native tile pool (cucim_like/executors/_tilepool.c, plain C loaded with ctypes).

Everything else is in pyproject.toml. ``optional=True``: without a C compiler (or on a platform without
pthreads) the package installs without it and reads take the Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cucim_like.executors._tilepool",
            sources=["cucim_like/executors/_tilepool.c"],
            extra_compile_args=["-O2", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
