"""The native part of the dataplane: the HTTP/2 engine's binding to nghttp2 (dataplane/nghttp2.pyx).

Everything else about the package is declared in pyproject.toml. The Makefile installs Debian's
libnghttp2-dev (the header and the shared library) before pip builds this.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("dataplane.nghttp2", ["dataplane/nghttp2.pyx"], libraries=["nghttp2"])],
        compiler_directives={"language_level": "3"},
    )
)
