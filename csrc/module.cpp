// Makes the ops library importable as the Python module wtext._C. Importing it runs the static TORCH_LIBRARY
// registrations; the ops themselves are reached through torch.ops.wtext, so no Python bindings are needed here.
#include <Python.h>

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "wtext's custom ops (registered under torch.ops.wtext on import)",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
