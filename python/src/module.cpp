// zcwrap._C: the Python package's bridge to libzcwrap. The Python side
// (python/zcwrap/) holds the API; this module packs, opens and unwraps, and
// turns zcwrap::Error into the zcwrap.Error subclass of its code.
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
#include "pack.hpp"
#include "pickle_scan.hpp"
#include "rebind.hpp"
#include "store.hpp"
#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"
#include "zcwrap/store.hpp"
#include "zcwrap/version.hpp"
#include "wrapper_access.hpp"

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

// A store blob's shared lock (flock), held by a Python wrapper: opaque.
struct StoreLock {
  std::shared_ptr<const void> held;
};

// The blob a Python wrapper opened and checked (from_actor, open), kept so
// that its unwrap maps nothing again: one open per operation.
struct OpenedBlob {
  std::shared_ptr<const zcwrap::detail::BlobFile> blob;
};

zcwrap::format::TensorKind kind_from_name(const std::string& name) {
  using zcwrap::format::TensorKind;
  if (name == "parameter") return TensorKind::kParameter;
  if (name == "buffer") return TensorKind::kBuffer;
  return TensorKind::kAttribute;
}

// models: [(name, "torchscript", torch._C.ScriptModule) or
//          (name, "python_pickle", (pickle bytes, [(path, kind, tensor)], unshared bytes))].
// Writes to `blob_path`, or into the store when it is empty. Returns the
// actor config as JSON text and, for the store, the lock that keeps gc away
// from the blob while the Python wrapper holds it. `pipeline_pickle` (bytes
// or None): a pipeline object's other attributes, stored in the blob.
std::pair<std::string, StoreLock> pack(const py::list& models, bool standalone, const std::string& blob_path, const std::string& store_dir,
                 uint64_t alignment, uint32_t file_mode, const py::object& pipeline_pickle) {
  std::optional<std::string> pipeline;
  if (!pipeline_pickle.is_none()) pipeline = pipeline_pickle.cast<py::bytes>().cast<std::string>();
  std::vector<zcwrap::detail::PackInput> inputs;
  std::vector<std::pair<std::string, torch::jit::Module>> scripted;
  for (const py::handle item : models) {
    const auto entry = item.cast<py::tuple>();
    const auto name = entry[0].cast<std::string>();
    const auto kind = entry[1].cast<std::string>();
    if (zcwrap::format::skeleton_kind(kind) == zcwrap::format::SkeletonKind::kTorchScript) {
      scripted.emplace_back(name, entry[2].cast<torch::jit::Module>());
      inputs.push_back({name, "module '" + name + "'", {}, {}, std::nullopt});
    } else {
      const auto payload = entry[2].cast<py::tuple>();
      zcwrap::detail::EagerModel eager;
      eager.pickle = payload[0].cast<std::string>();
      for (const py::handle t : payload[1].cast<py::list>()) {
        const auto tensor = t.cast<py::tuple>();
        eager.tensors.push_back({tensor[0].cast<std::string>(), kind_from_name(tensor[1].cast<std::string>()),
                                 tensor[2].cast<at::Tensor>()});
      }
      eager.unshared_bytes = payload[2].cast<uint64_t>();
      inputs.push_back({name, "module '" + name + "'", {}, {}, std::move(eager)});
    }
  }
  return without_gil([&] {
    // TorchScript modules are copied (saved and reloaded) so the packer never
    // touches the caller's tensors.
    size_t next = 0;
    for (zcwrap::detail::PackInput& input : inputs) {
      if (!input.eager) input = zcwrap::detail::copy_module(input.name, scripted[next++].second);
    }
    zcwrap::PackOptions options;
    options.alignment = alignment;
    options.store_dir = store_dir;
    options.store_file_mode = file_mode;
    const zcwrap::detail::PreparedBlob blob = zcwrap::detail::prepare_blob(inputs, standalone, options, pipeline);
    if (blob_path.empty()) {
      const zcwrap::ModelWrapper wrapper = zcwrap::detail::stored_wrapper(blob, options);
      return std::make_pair(wrapper.to_actor().dump(), StoreLock{zcwrap::detail::store_lock(wrapper)});
    }
    zcwrap::detail::write_blob(blob, blob_path);
    return std::make_pair(zcwrap::detail::written_wrapper(blob_path, blob).to_actor().dump(), StoreLock{});
  });
}

// What Python needs to know of a blob: names, kinds, standalone.
py::dict summary(const zcwrap::detail::BlobFile& blob) {
  py::list names, kinds;
  for (const auto& m : blob.manifest().models) {
    names.append(m.name);
    kinds.append(m.skeleton.kind);
  }
  py::dict out;
  out["models"] = names;
  out["kinds"] = kinds;
  out["standalone"] = blob.manifest().standalone;
  out["blob_size"] = blob.size();
  out["meta_checksum"] = zcwrap::format::hex64(blob.header().meta_checksum);
  return out;
}

std::shared_ptr<const zcwrap::detail::BlobFile> open_config(const std::string& config_text, bool copy_on_write) {
  json config;
  try {
    config = json::parse(config_text);
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kBadBlob, std::string("actor config: not JSON: ") + e.what());
  }
  // from_actor checks every field and the pins, on the mapping unwrap then uses.
  return zcwrap::detail::checked_blob(zcwrap::ModelWrapper::from_actor(config), copy_on_write);
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

std::shared_ptr<const zcwrap::detail::BlobFile> open_buffer(const py::object& buffer, const std::string& name,
                                                            bool copy_on_write = false) {
  auto held = std::make_shared<HeldBuffer>();
  if (PyObject_GetBuffer(buffer.ptr(), &held->view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
  const void* data = held->view.buf;
  const auto size = static_cast<size_t>(held->view.len);
  return without_gil([&] { return zcwrap::detail::BlobFile::open_memory(data, size, held, name, copy_on_write); });
}

zcwrap::Prefetch prefetch_from_name(const std::string& name) {
  if (name == "none") return zcwrap::Prefetch::kNone;
  if (name == "willneed") return zcwrap::Prefetch::kWillNeed;
  if (name == "populate") return zcwrap::Prefetch::kPopulate;
  if (name == "lock") return zcwrap::Prefetch::kLock;
  throw Error(ErrorCode::kUsage, "prefetch '" + name + "': use none, willneed, populate or lock");
}

// Unwraps every model. Returns (standalone, models, warnings, (mapping start,
// size), the pipeline object's pickle or None); each model is (name, kind,
// ScriptModule or None, tensors, pickle bytes or None).
py::tuple unwrap(const std::shared_ptr<const zcwrap::detail::BlobFile>& blob, const std::string& device,
                 bool use_fast_load, bool verify, bool copy_on_write, const std::string& prefetch) {
  zcwrap::UnwrapOptions options;
  options.device = device;
  options.use_fast_load = use_fast_load;
  options.verify = verify;
  options.copy_on_write = copy_on_write;
  options.prefetch = prefetch_from_name(prefetch);
  std::vector<std::string> pickles;
  std::optional<std::string> pipeline;
  auto state = without_gil([&] {
    auto s = zcwrap::detail::unwrap_blob(blob, options, /*bind_only_pickles=*/true);
    for (size_t i = 0; i < s->names.size(); ++i) {
      pickles.push_back(s->kinds[i] == zcwrap::format::SkeletonKind::kPythonPickle ? blob->skeleton(i) : "");
    }
    pipeline = blob->pipeline_pickle();
    return s;
  });
  py::list models;
  for (size_t i = 0; i < state->names.size(); ++i) {
    const bool pickled = state->kinds[i] == zcwrap::format::SkeletonKind::kPythonPickle;
    py::list tensors;
    for (const at::Tensor& t : state->tensors[i]) tensors.append(py::cast(t));
    models.append(py::make_tuple(state->names[i], zcwrap::format::skeleton_kind_name(state->kinds[i]),
                                 pickled ? py::none() : py::cast(state->modules[i]), tensors,
                                 pickled ? py::object(py::bytes(pickles[i])) : py::none()));
  }
  const auto base = reinterpret_cast<uintptr_t>(blob->data());
  return py::make_tuple(state->standalone, models, state->warnings, py::make_tuple(base, blob->size()),
                        pipeline ? py::object(py::bytes(*pipeline)) : py::none());
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "zcwrap's native half; use the zcwrap package, not this module.";
  m.attr("version") = zcwrap::kVersion;
  m.attr("libtorch_version") = zcwrap::kLibTorchVersion;

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

  py::class_<StoreLock>(m, "StoreLock", "A shared lock on a store blob: zcwrap.gc() leaves the blob while it lives.");
  m.def("pack", &pack, py::arg("models"), py::arg("standalone"), py::arg("blob_path"), py::arg("store_dir"),
        py::arg("alignment"), py::arg("file_mode") = 0600, py::arg("pipeline_pickle") = py::none());
  // The globals a pickle imports, read without running it: ([(module, name)],
  // "" or why the pickle cannot be read).
  m.def("pickle_globals", [](const py::bytes& pickle) {
    const std::string data = pickle;
    const zcwrap::detail::PickleScan scan = zcwrap::detail::scan_pickle(data);
    py::list globals;
    for (const zcwrap::detail::PickleGlobal& g : scan.globals) globals.append(py::make_tuple(g.module, g.name));
    return py::make_tuple(globals, scan.error);
  });
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
  m.def("shareable", [](const at::Tensor& t) { return zcwrap::detail::is_shareable(t); });
  py::class_<OpenedBlob>(m, "OpenedBlob", "A blob mapped and checked once; unwrap_opened unwraps it.");
  m.def("open_actor", [](const std::string& config) {
    auto blob = without_gil([&] { return open_config(config, false); });
    return py::make_tuple(summary(*blob), OpenedBlob{blob});
  });
  // (actor config as JSON text, summary, the opened blob): one open.
  m.def("open_path", [](const std::string& path) {
    std::string config;
    auto blob = without_gil([&] {
      const zcwrap::ModelWrapper wrapper = zcwrap::ModelWrapper::open(path);
      config = wrapper.to_actor().dump();
      return zcwrap::detail::checked_blob(wrapper);
    });
    return py::make_tuple(config, summary(*blob), OpenedBlob{blob});
  });
  m.def("unwrap_opened", [](const OpenedBlob& opened, const std::string& device, bool use_fast_load, bool verify,
                            const std::string& prefetch) {
    return unwrap(opened.blob, device, use_fast_load, verify, false, prefetch);
  }, py::arg("opened"), py::arg("device"), py::arg("use_fast_load"), py::arg("verify"), py::arg("prefetch"));
  m.def("open_buffer", [](const py::object& buffer, const std::string& name) {
    auto blob = open_buffer(buffer, name);
    return py::make_tuple(summary(*blob), OpenedBlob{blob});
  });
  m.def("unwrap_actor", [](const std::string& config, const std::string& device, bool use_fast_load, bool verify,
                           bool copy_on_write, const std::string& prefetch) {
    auto blob = without_gil([&] { return open_config(config, copy_on_write); });
    return unwrap(blob, device, use_fast_load, verify, copy_on_write, prefetch);
  });
  // `pinned_checksum` (with `pinned_size`), when not empty: the blob the
  // wrapper was made for; other bytes are Error(kStale) before any unwrap.
  m.def("unwrap_buffer", [](const py::object& buffer, const std::string& name, const std::string& device,
                            bool use_fast_load, bool verify, const std::string& prefetch, uint64_t pinned_size,
                            const std::string& pinned_checksum, bool copy_on_write) {
    auto blob = open_buffer(buffer, name, copy_on_write);
    if (!pinned_checksum.empty() && (blob->size() != pinned_size ||
                                     zcwrap::format::hex64(blob->header().meta_checksum) != pinned_checksum)) {
      throw Error(ErrorCode::kStale, name + ": is not the blob this wrapper was made for");
    }
    return unwrap(blob, device, use_fast_load, verify, copy_on_write, prefetch);
  }, py::arg("buffer"), py::arg("name"), py::arg("device"), py::arg("use_fast_load"), py::arg("verify"),
     py::arg("prefetch"), py::arg("pinned_size"), py::arg("pinned_checksum"), py::arg("copy_on_write") = false);
  m.def("describe", [](const std::string& path) {
    return without_gil([&] { return nlohmann::json(zcwrap::describe(path)).dump(); });
  });
  m.def("verify", [](const std::string& path) {
    return without_gil([&] { return nlohmann::json(zcwrap::verify(path)).dump(); });
  });
  m.def("unpack", [](const std::string& config, const std::string& output, const std::string& model) {
    without_gil([&] {
      zcwrap::ModelWrapper::from_actor(json::parse(config)).unpack(output, model);
      return 0;
    });
  });
}
