// zcwrap-sample worker: loads the model (zero-copy from the blob, or with
// torch::jit::load for the baseline), serves batches, reports to the driver,
// and stays alive until the driver has read its memory. The only file of the
// sample that includes LibTorch.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "sample.hpp"
#include "zcwrap/zcwrap.hpp"

namespace sample {
namespace {

using Clock = std::chrono::steady_clock;

struct WorkerArgs {
  int index = 0;  // unused here; it tells workers apart in ps(1)
  std::string input;
  int batches = 20;
  int threads = 1;
  std::string actor;  // zcwrap mode: the actor config, as JSON text
  std::string model;  // zcwrap mode: run only this model of the pipeline
  std::vector<std::pair<std::string, std::string>> loads;  // baseline mode: NAME, PATH
};

int parse_int(const std::string& option, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < 0 || value > 1000000) {
    throw std::runtime_error(option + " " + text + ": not a count");
  }
  return static_cast<int>(value);
}

WorkerArgs parse_args(int argc, char** argv) {
  WorkerArgs args;
  for (int i = 0; i < argc; ++i) {
    const std::string option = argv[i];
    if (i + 1 >= argc) throw std::runtime_error("worker option " + option + " needs a value");
    const std::string value = argv[++i];
    if (option == "--index") {
      args.index = parse_int(option, value);
    } else if (option == "--input") {
      args.input = value;
    } else if (option == "--batches") {
      args.batches = parse_int(option, value);
    } else if (option == "--threads") {
      args.threads = parse_int(option, value);
    } else if (option == "--actor") {
      args.actor = value;
    } else if (option == "--model") {
      args.model = value;
    } else if (option == "--load") {
      const size_t eq = value.find('=');
      if (eq == std::string::npos) throw std::runtime_error("--load " + value + ": expected NAME=PATH");
      args.loads.emplace_back(value.substr(0, eq), value.substr(eq + 1));
    } else {
      throw std::runtime_error("unknown worker option " + option);
    }
  }
  if (args.input.empty() || args.actor.empty() == args.loads.empty() || args.batches < 1 || args.threads < 1) {
    throw std::runtime_error("worker needs --input, --batches >= 1, --threads >= 1, and --actor or --load");
  }
  return args;
}

// LibTorch's messages carry a C++ backtrace and, from the interpreter, a
// TorchScript traceback; the driver's one-line error needs the last line,
// which says what failed.
std::string torch_message(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

std::vector<c10::IValue> as_arguments(const c10::IValue& value) {
  if (!value.isTuple()) return {value};
  const auto& elements = value.toTupleRef().elements();
  return std::vector<c10::IValue>(elements.begin(), elements.end());
}

std::vector<c10::IValue> read_inputs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw zcwrap::Error(zcwrap::ErrorCode::kInput, path + ": cannot open: " + std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    // torch::jit::pickle_load, not torch::pickle_load: in LibTorch 1.13 the
    // latter is declared in <torch/serialize.h>, which <torch/script.h> does
    // not include.
    return as_arguments(torch::jit::pickle_load(bytes));
  } catch (const std::exception& e) {
    throw zcwrap::Error(zcwrap::ErrorCode::kInput,
                        path + ": not a tensor file written by torch.save (" + torch_message(e) + ")");
  }
}

// FNV-1a over dtype, shape and bytes: equal digests mean bit-equal outputs
// (up to a 64-bit collision), so workers can be compared without shipping
// whole tensors back through the socket.
class Digest {
 public:
  void add(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) hash_ = (hash_ ^ p[i]) * 0x100000001b3ULL;
  }

  void add(const c10::IValue& value) {
    if (value.isTensor()) {
      const at::Tensor t = value.toTensor().contiguous();
      const std::string dtype = c10::toString(t.scalar_type());
      add(dtype.data(), dtype.size());
      for (const int64_t size : t.sizes()) add(&size, sizeof(size));
      add(t.data_ptr(), t.nbytes());
    } else if (value.isTuple() || value.isList()) {
      for (const c10::IValue& e : value.isTuple() ? as_arguments(value) : value.toList().vec()) add(e);
    } else {
      throw zcwrap::Error(zcwrap::ErrorCode::kBadModel,
                          std::string("the model returned a ") + value.tagKind() +
                              "; the sample compares tensors, tuples and lists of them");
    }
  }

  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016" PRIx64, hash_);
    return buf;
  }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// Python's names ("float32"), as `zcwrap inspect` and torch print them.
std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

// "float32[2, 4]"; for a tuple or list, its kind.
std::string describe_output(const c10::IValue& value) {
  if (!value.isTensor()) return value.tagKind();
  const at::Tensor& t = value.toTensor();
  std::string text = dtype_name(t.scalar_type()) + "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

struct WeightBytes {
  uint64_t total = 0;       // bytes of the distinct storages behind the models' tensors
  uint64_t in_mapping = 0;  // of which inside the blob's mapping
};

// Forward alone does not read every weight (an embedding reads only the rows
// of the tokens in the batch), so read one byte of every page of every
// storage: both kinds of worker then hold the whole model resident and the
// memory figures compare whole models, not whatever one batch touched.
WeightBytes touch_weights(const std::vector<torch::jit::Module>& modules, const void* mapping,
                          size_t mapping_size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const auto* map_begin = static_cast<const unsigned char*>(mapping);
  std::set<const void*> seen;  // tied weights share a storage; count it once
  WeightBytes bytes;
  for (const torch::jit::Module& module : modules) {
    for (const auto& attribute : module.named_attributes(/*recurse=*/true)) {
      if (!attribute.value.isTensor()) continue;
      const at::Tensor tensor = attribute.value.toTensor();
      const c10::Storage& storage = tensor.storage();
      const auto* data = static_cast<const unsigned char*>(storage.data_ptr().get());
      if (data == nullptr || !seen.insert(data).second) continue;
      const size_t size = storage.nbytes();
      // A volatile read is never optimized away, used or not.
      const volatile unsigned char* bytes_of_storage = data;
      for (size_t offset = 0; offset < size; offset += page) static_cast<void>(bytes_of_storage[offset]);
      bytes.total += size;
      if (map_begin != nullptr && data >= map_begin && size <= mapping_size &&
          static_cast<size_t>(data - map_begin) <= mapping_size - size) {
        bytes.in_mapping += size;
      }
    }
  }
  return bytes;
}

// False when the driver is gone (or this worker was started by hand,
// without the socket on kReportFd).
bool send_line(const std::string& line) {
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = write(kReportFd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "zcwrap-sample worker: cannot report to the driver on fd %d: %s\n", kReportFd,
                   std::strerror(errno));
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// Blocks until the driver closes its end (or dies): the modules stay mapped
// and resident until then, so the driver reads the memory of a live worker.
void wait_for_driver() {
  char buf[64];
  for (;;) {
    const ssize_t n = read(kReportFd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EINTR)) return;
  }
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Loads, serves, reports, and waits for the driver, all while the modules
// are alive.
void serve(const WorkerArgs& args) {
  // N workers each with a pool as wide as the machine would oversubscribe
  // the cores and make every latency a measure of contention.
  at::set_num_threads(args.threads);
  const std::vector<c10::IValue> inputs = read_inputs(args.input);

  std::optional<zcwrap::Unwrapped> unwrapped;  // owns the modules in zcwrap mode
  std::vector<torch::jit::Module> chain;       // run in order, each fed the last one's output
  double load_ms = 0;
  if (!args.actor.empty()) {
    const nlohmann::json config = nlohmann::json::parse(args.actor);
    const auto start = Clock::now();
    unwrapped = zcwrap::ModelWrapper::from_actor(config).unwrap("cpu");
    load_ms = ms_since(start);
    if (!args.model.empty()) {
      chain.push_back(unwrapped->at(args.model));
    } else {
      for (const std::string& name : unwrapped->names()) chain.push_back(unwrapped->at(name));
    }
  } else {
    const auto start = Clock::now();
    for (const auto& [name, path] : args.loads) {
      try {
        chain.push_back(torch::jit::load(path));
      } catch (const std::exception& e) {
        throw zcwrap::Error(zcwrap::ErrorCode::kBadModel, path + ": torch::jit::load failed: " + torch_message(e));
      }
      chain.back().eval();  // what unwrap hands back, so both serve the same way
    }
    load_ms = ms_since(start);
  }
  const WeightBytes weights = touch_weights(chain, unwrapped ? unwrapped->mapping_data() : nullptr,
                                            unwrapped ? unwrapped->mapping_size() : 0);

  torch::NoGradGuard no_grad;
  std::vector<double> batch_ms;
  std::string checksum;
  std::string output;
  bool stable = true;
  for (int batch = 0; batch < args.batches; ++batch) {
    const auto start = Clock::now();
    c10::IValue result;
    std::vector<c10::IValue> arguments = inputs;
    try {
      for (torch::jit::Module& module : chain) {
        result = module.forward(arguments);
        arguments = as_arguments(result);
      }
    } catch (const std::exception& e) {  // the interpreter's errors are not all c10::Error
      throw zcwrap::Error(zcwrap::ErrorCode::kBadModel,
                          args.input + ": the model failed on this input: " + torch_message(e));
    }
    batch_ms.push_back(ms_since(start));
    Digest digest;
    digest.add(result);
    if (batch == 0) {
      checksum = digest.hex();
      output = describe_output(result);
    } else if (digest.hex() != checksum) {
      stable = false;
    }
  }

  const nlohmann::json report = {{"ok", true},
                                 {"load_ms", load_ms},
                                 {"batch_ms", median(batch_ms)},
                                 {"checksum", checksum},
                                 {"output", output},
                                 {"stable", stable},
                                 {"weight_bytes", weights.total},
                                 {"weight_bytes_in_mapping", weights.in_mapping}};
  if (!send_line(report.dump() + "\n")) throw std::runtime_error("the driver is gone");
  wait_for_driver();
}

}  // namespace

int run_worker(int argc, char** argv) {
  nlohmann::json failure;
  try {
    serve(parse_args(argc, argv));
    return 0;
  } catch (const zcwrap::Error& e) {
    failure = {{"ok", false}, {"code", static_cast<int>(e.code())}, {"error", e.what()}};
  } catch (const std::exception& e) {
    failure = {{"ok", false}, {"error", torch_message(e)}};
  }
  if (!send_line(failure.dump() + "\n")) {
    std::fprintf(stderr, "zcwrap-sample worker: error: %s\n", failure["error"].get<std::string>().c_str());
  }
  return 1;
}

}  // namespace sample
