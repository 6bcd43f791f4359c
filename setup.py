"""Builds the native CPU kernels (``csrc/<op>.cpp`` -> ``fgkernels._C_<op>``).

Metadata lives in pyproject.toml; this file only adds the C++ extension. Install with
``pip install --no-build-isolation -e .`` after torch is installed (build isolation would
pull a second, multi-GB CUDA torch just to compile against). If the compiler is missing
or the build fails, the package installs without the failed module and that op falls back
to its eager reference with a warning. ``FGRLHF_NO_EXT=1`` skips the build on purpose.
"""

import glob
import os
import sys

from setuptools import setup


def _extensions():
    if os.environ.get("FGRLHF_NO_EXT", "0") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("fgrlhf: torch is not importable at build time; skipping the native kernels", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """A failed compile of one op warns and installs without that op's module."""

        failed: set = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                self.failed.add(ext.name)
                print(
                    f"fgrlhf: WARNING: building {ext.name} failed ({exc}); "
                    "that op will use its eager reference on CPU",
                    file=sys.stderr,
                )

        def copy_extensions_to_source(self):  # --inplace / editable: skip what failed
            self.extensions = [e for e in self.extensions if e.name not in self.failed]
            super().copy_extensions_to_source()

    # One module per op (csrc/<op>.cpp -> fgkernels._C_<op>).
    exts = [
        CppExtension(
            name=f"fgkernels._C_{os.path.splitext(os.path.basename(src))[0]}",
            sources=[src],
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args=["-O3", "-fopenmp", "-std=c++20"],
            extra_link_args=["-fopenmp"],
        )
        for src in sorted(glob.glob("csrc/*.cpp"))
    ]
    return exts, {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
