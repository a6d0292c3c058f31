// zcwrap._C: libzcwrap's own ModelWrapper, Unwrapped and Unwrapped::Model
// as Python classes, for the Python package (python/zcwrap/), which holds the
// API and the kinds of skeleton it makes itself; zcwrap::Error becomes the
// zcwrap.Error subclass of its code.
//
// Built against the torch it runs with (torch's own pybind11, whose casters
// turn at::Tensor and torch::jit::Module into torch's Python objects).
#include <Python.h>

#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/csrc/utils/pybind.h>
#include <torch/script.h>

#include "blob_file.hpp"
#include "fault_guard.hpp"
#include "messages.hpp"
#include "pack.hpp"
#include "pickle_scan.hpp"
#include "torch_util.hpp"
#include "unwrap.hpp"
#include "wrapper_access.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"
#include "zcwrap/store.hpp"
#include "zcwrap/version.hpp"

namespace py = pybind11;
using nlohmann::json;
using zcwrap::Error;
using zcwrap::ErrorCode;

namespace {

// Runs `fn` with the GIL released; zcwrap::Error and anything LibTorch
// throws come out as zcwrap::Error, for the translator below.
template <typename Fn>
auto without_gil(Fn&& fn) {
  py::gil_scoped_release release;
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInternal, zcwrap::detail::first_line(e));
  }
}

// A Python buffer held for as long as the blob made from it: released
// under the GIL, on whichever thread drops the last tensor.
struct HeldBuffer {
  Py_buffer view{};
  ~HeldBuffer() {
    if (!Py_IsInitialized()) return;  // the interpreter is gone: nothing to release to
    py::gil_scoped_acquire gil;
    PyBuffer_Release(&view);
  }
};

// A model for pack: a TorchScript module, or a kind the Python package made
// the skeleton of (its tensors in the order the skeleton refers to them).
struct PackModel {
  std::string name;
  std::optional<torch::jit::Module> script;
  zcwrap::detail::PythonModel python;
  std::optional<std::string> file;  // a model file: an AOTInductor package (.pt2), a TorchScript archive
};

zcwrap::ModelWrapper pack(const std::vector<PackModel>& models, bool standalone, const std::string& blob_path,
                          const std::string& store_dir, uint64_t alignment, uint32_t file_mode,
                          const std::optional<py::bytes>& pipeline_object) {
  std::optional<std::string> pipeline;
  if (pipeline_object) pipeline = std::string(*pipeline_object);
  zcwrap::PackOptions options;
  options.alignment = alignment;
  options.store_dir = store_dir;
  options.store_file_mode = file_mode;
  return without_gil([&] {
    // TorchScript modules are copied (saved and reloaded) so the packer never
    // touches the caller's tensors.
    std::vector<zcwrap::detail::PackInput> inputs;
    for (const PackModel& m : models) {
      if (m.script) {
        inputs.push_back(zcwrap::detail::copy_module(m.name, *m.script));
      } else if (m.file) {
        // As `zcwrap pack FILE` reads it (one open; a .pt2 by its records;
        // an AOTInductor package of several models gives each, by its name).
        const bool alone = standalone && models.size() == 1;
        if (alone) options.standalone_name = m.name;
        auto loaded = zcwrap::detail::load_model_files(
            {{m.name, *m.file}}, alone ? zcwrap::Layout::kStandalone : zcwrap::Layout::kPipeline, options);
        for (auto& input : loaded) inputs.push_back(std::move(input));
      } else {
        inputs.push_back({m.name, "module '" + m.name + "'", m.python});
      }
    }
    const zcwrap::Layout layout =
        standalone && inputs.size() == 1 ? zcwrap::Layout::kStandalone : zcwrap::Layout::kPipeline;
    return zcwrap::detail::WrapperAccess::pack(inputs, layout, options, pipeline, blob_path).wrapper;
  });
}

zcwrap::ModelWrapper from_buffer(const py::object& buffer, const std::string& name) {
  auto held = std::make_shared<HeldBuffer>();
  if (PyObject_GetBuffer(buffer.ptr(), &held->view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
  zcwrap::MemoryBlob memory{held->view.buf, static_cast<size_t>(held->view.len), held, name};
  return without_gil([&] { return zcwrap::ModelWrapper::from_memory(std::move(memory)); });
}

zcwrap::Unwrapped unwrap(const zcwrap::ModelWrapper& wrapper, const std::string& device, bool use_fast_load,
                         bool verify, bool copy_on_write, const std::string& prefetch) {
  zcwrap::UnwrapOptions options;
  options.device = device;
  options.use_fast_load = use_fast_load;
  options.verify = verify;
  options.copy_on_write = copy_on_write;
  options.prefetch = zcwrap::parse_prefetch(prefetch);
  return without_gil([&] {
    using zcwrap::detail::WrapperAccess;
    auto blob = WrapperAccess::checked_blob(wrapper, zcwrap::detail::access_of(options));
    return WrapperAccess::unwrapped(zcwrap::detail::unwrap_blob(blob, options, zcwrap::detail::PythonKinds::kBind));
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zcwrap's native half; use the zcwrap package, not this module.";
  m.attr("version") = zcwrap::kVersion;
  m.attr("libtorch_version") = zcwrap::kLibTorchVersion;
  py::list prefetch_names;
  for (std::string_view name : zcwrap::kPrefetchNames) prefetch_names.append(std::string(name));
  m.attr("prefetch_names") = py::tuple(prefetch_names);

  // zcwrap::Error becomes zcwrap.errors.<class of its code>.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::object make = py::module_::import("zcwrap.errors").attr("_from_code");
      py::object error = make(static_cast<int>(e.code()), e.what());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
    }
  });

  // Writes to the caller's stderr from the SIGSEGV handler: name the option as Python spells it.
  zcwrap::detail::set_copy_on_write_hint("unwrap(copy_on_write=True)");

  py::enum_<zcwrap::format::TensorKind>(m, "TensorKind", "What a tensor is to its module.")
      .value("parameter", zcwrap::format::TensorKind::kParameter)
      .value("buffer", zcwrap::format::TensorKind::kBuffer)
      .value("attribute", zcwrap::format::TensorKind::kAttribute)
      .value("constant", zcwrap::format::TensorKind::kConstant);

  py::class_<PackModel>(m, "PackModel", "One model for ModelWrapper.pack.")
      .def_static("torchscript", [](const std::string& name, const torch::jit::Module& module) {
        return PackModel{name, module, {}, std::nullopt};
      }, py::arg("name"), py::arg("module"))
      .def_static("file", [](const std::string& name, const std::string& path) {
        return PackModel{name, std::nullopt, {}, path};
      }, py::arg("name"), py::arg("path"))
      .def_static("python", [](const std::string& name, const std::string& kind, const py::bytes& skeleton,
                               const std::vector<std::tuple<std::string, zcwrap::format::TensorKind, at::Tensor>>& tensors,
                               uint64_t unshared_bytes) {
        const zcwrap::format::SkeletonKind k = zcwrap::format::skeleton_kind(kind);
        if (k == zcwrap::format::SkeletonKind::kUnknown || !zcwrap::format::skeleton_kind_info(k).rebuilt_in_python) {
          throw Error(ErrorCode::kUsage, "skeleton kind '" + kind + "' is not one the Python package makes");
        }
        PackModel model{name, std::nullopt, {k, std::string(skeleton), {}, unshared_bytes}, std::nullopt};
        for (const auto& [path, tensor_kind, tensor] : tensors) model.python.tensors.push_back({path, tensor_kind, tensor});
        return model;
      }, py::arg("name"), py::arg("kind"), py::arg("skeleton"), py::arg("tensors"), py::arg("unshared_bytes"));

  using zcwrap::ModelWrapper;
  py::class_<ModelWrapper>(m, "ModelWrapper", "libzcwrap's ModelWrapper: a packed, checked blob.")
      .def_static("pack", &pack, py::arg("models"), py::arg("standalone"), py::kw_only(), py::arg("blob_path") = "",
                  py::arg("store_dir") = "", py::arg("alignment") = 4096, py::arg("file_mode") = 0600,
                  py::arg("pipeline_object") = py::none())
      .def_static("from_actor", [](const std::string& config) {
        return without_gil([&] {
          json parsed;
          try {
            parsed = json::parse(config);
          } catch (const json::exception& e) {
            throw Error(ErrorCode::kBadBlob, std::string("actor config: not JSON: ") + e.what());
          }
          return ModelWrapper::from_actor(parsed);
        });
      }, py::arg("config"))
      .def_static("open", [](const std::string& path) { return without_gil([&] { return ModelWrapper::open(path); }); },
                  py::arg("path"))
      .def_static("from_buffer", &from_buffer, py::arg("buffer"), py::arg("name"))
      .def("to_actor", [](const ModelWrapper& w) { return w.to_actor().dump(); })
      .def("unwrap", &unwrap, py::kw_only(), py::arg("device") = "cpu", py::arg("use_fast_load") = false,
           py::arg("verify") = false, py::arg("copy_on_write") = false, py::arg("prefetch") = "none")
      .def("unpack", [](const ModelWrapper& w, const std::string& output, const std::string& model) {
        without_gil([&] { w.unpack(output, model); });
      }, py::arg("output"), py::arg("model") = "")
      .def("check_pins", [](const ModelWrapper& w, uint64_t size, const std::string& checksum) {
        uint64_t pinned = 0;
        if (!zcwrap::format::parse_hex64(checksum, &pinned)) {
          throw Error(ErrorCode::kBadBlob, w.blob_path() + ": the pinned meta_checksum is not 16 hex digits");
        }
        zcwrap::detail::check_pins(*zcwrap::detail::checked_blob(w), {size, pinned}, "this wrapper");
      }, py::arg("blob_size"), py::arg("meta_checksum"))
      .def_property_readonly("is_standalone_module", &ModelWrapper::is_standalone_module)
      .def_property_readonly("model_names", &ModelWrapper::model_names)
      .def_property_readonly("model_kinds", &ModelWrapper::model_kinds)
      .def_property_readonly("blob_path", &ModelWrapper::blob_path)
      .def_property_readonly("blob_size", &ModelWrapper::blob_size)
      .def_property_readonly("meta_checksum", [](const ModelWrapper& w) { return zcwrap::format::hex64(w.meta_checksum()); })
      .def_property_readonly("in_memory", &ModelWrapper::in_memory);

  using zcwrap::Unwrapped;
  py::class_<Unwrapped::Model>(m, "UnwrappedModel", "One model of an unwrap.")
      .def_property_readonly("name", &Unwrapped::Model::name)
      .def_property_readonly("kind", &Unwrapped::Model::kind)
      .def_property_readonly("module", [](Unwrapped::Model& model) -> py::object {
        if (!model.is_torchscript()) return py::none();
        return py::cast(model.module());
      })
      .def_property_readonly("tensors", &Unwrapped::Model::tensors)
      // An AOTInductor model: (in_spec, out_spec), torch's pytree specs of
      // its arguments and result; None for other kinds.
      .def_property_readonly("call_spec", [](const Unwrapped::Model& model) -> py::object {
        const auto* aoti = std::get_if<std::shared_ptr<zcwrap::detail::AotiModel>>(
            &zcwrap::detail::WrapperAccess::model(model).built);
        if (aoti == nullptr) return py::none();
        return py::make_tuple((*aoti)->in_spec(), (*aoti)->out_spec());
      })
      // An AOTInductor model run on its flat input tensors: its flat outputs.
      .def("run_flat", [](const Unwrapped::Model& model, const std::vector<at::Tensor>& inputs) {
        const auto* aoti = std::get_if<std::shared_ptr<zcwrap::detail::AotiModel>>(
            &zcwrap::detail::WrapperAccess::model(model).built);
        if (aoti == nullptr) {
          throw Error(ErrorCode::kUsage, "model '" + model.name() + "' (skeleton kind " + model.kind() +
                                             ") is not an AOTInductor model");
        }
        return without_gil([&] { return (*aoti)->run(inputs); });
      }, py::arg("inputs"))
      // A kind the Python package rebuilds: its skeleton's bytes.
      .def_property_readonly("skeleton", [](const Unwrapped::Model& model) -> py::object {
        const auto* python = std::get_if<zcwrap::detail::PythonSkeleton>(&zcwrap::detail::WrapperAccess::model(model).built);
        if (python == nullptr) return py::none();
        return py::bytes(python->bytes);
      });
  py::class_<Unwrapped>(m, "Unwrapped", "libzcwrap's Unwrapped: every model of a blob, rebuilt or bound.")
      .def_property_readonly("models", &Unwrapped::models)
      .def_property_readonly("is_standalone_module", &Unwrapped::is_standalone_module)
      .def_property_readonly("device", &Unwrapped::device)
      .def_property_readonly("warnings", &Unwrapped::warnings)
      .def_property_readonly("pipeline_object", [](const Unwrapped& u) -> py::object {
        const auto& pipeline = zcwrap::detail::WrapperAccess::state(u)->pipeline_object;
        if (!pipeline) return py::none();
        return py::bytes(*pipeline);
      });

  // The globals a pickle imports, read without running it: ([(module, name)],
  // "" or why the pickle cannot be read).
  m.def("pickle_globals", [](const py::bytes& pickle) {
    const std::string data = pickle;
    const zcwrap::detail::PickleScan scan = zcwrap::detail::scan_pickle(data);
    py::list globals;
    for (const zcwrap::detail::PickleGlobal& g : scan.globals) globals.append(py::make_tuple(g.module, g.name));
    return py::make_tuple(globals, scan.error);
  }, py::arg("pickle"));
  m.def("store_folder", [](const std::string& store_dir) { return zcwrap::store_folder(store_dir); },
        py::arg("store_dir") = "");
  m.def("gc", [](const std::string& store_dir, bool dry_run) {
    const auto removed = without_gil([&] { return zcwrap::gc({store_dir, dry_run}); });
    py::list out;
    for (const zcwrap::StoreFile& f : removed) {
      py::dict entry;
      entry["path"] = f.path;
      entry["bytes"] = f.bytes;
      entry["temporary"] = f.temporary;
      out.append(entry);
    }
    return out;
  }, py::arg("store_dir") = "", py::arg("dry_run") = false);
  m.def("shareable", [](const at::Tensor& t) { return zcwrap::detail::is_shareable(t); }, py::arg("tensor"));
  m.def("describe", [](const std::string& path) {
    return without_gil([&] { return nlohmann::json(zcwrap::describe(path)).dump(); });
  }, py::arg("path"));
  m.def("verify", [](const std::string& path) {
    return without_gil([&] { return nlohmann::json(zcwrap::verify(path)).dump(); });
  }, py::arg("path"));
}
