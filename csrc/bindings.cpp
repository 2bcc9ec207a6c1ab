// fastblend._C: one init_* function per op, each defined in that op's .cpp file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastblend {
void init_segment_blend(py::module_& m);
void init_quantile_mmd(py::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastblend CPU kernels (C++17/OpenMP); called through fastblend.ops";
  fastblend::init_segment_blend(m);
  fastblend::init_quantile_mmd(m);
}
