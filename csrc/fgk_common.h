// Shared by every csrc/<op>.cpp. Each op file is its own Python module
// `fgkernels._C_<op>`: importing it loads the library, whose TORCH_LIBRARY_FRAGMENT
// registers torch.ops.fgkernels.<op>_*. One module per op means a compiler that rejects
// one file still leaves the other ops native. No pybind11: a bare CPython module keeps
// the build light.
#pragma once
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#define FGK_PYTHON_MODULE(NAME)                                                          \
  static struct PyModuleDef fgk_module_##NAME = {PyModuleDef_HEAD_INIT, #NAME, nullptr, \
                                                 -1, nullptr};                           \
  PyMODINIT_FUNC PyInit_##NAME(void) { return PyModule_Create(&fgk_module_##NAME); }
