// zcwrap run: one call of a model's method, straight from the blob.
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <torch/script.h>

#include "commands.hpp"
#include "common.hpp"
#include "torch_io.hpp"
#include "file_util.hpp"
#include "zcwrap/zcwrap.hpp"
#include "messages.hpp"

namespace zcwrap::cli {
namespace {

struct RunArgs {
  std::string path;
  std::string input;
  std::string output;
  std::string model;
  std::string method = "forward";
  std::string device = "cpu";
  bool fast_load = false;
  Prefetch prefetch = Prefetch::kNone;
};

// Tensors in the result go back to the CPU so that torch.load opens the file
// anywhere.
c10::IValue to_cpu(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor().cpu();
  if (v.isTuple()) {
    std::vector<c10::IValue> out;
    for (const c10::IValue& e : v.toTupleRef().elements()) out.push_back(to_cpu(e));
    return c10::ivalue::Tuple::create(std::move(out));
  }
  if (v.isList()) {
    c10::impl::GenericList out(v.toList().elementType());
    for (const c10::IValue& e : v.toList()) out.push_back(to_cpu(e));
    return out;
  }
  return v;
}

int run_run(const RunArgs& args) {
  const std::string output = output_path(args.output);
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  check_outputs({output}, {args.path, wrapper.blob_path(), args.input});
  std::string name = args.model;
  if (name.empty()) {
    if (!wrapper.is_standalone_module()) {
      throw Error(ErrorCode::kUsage, args.path + ": holds a pipeline; choose a model with --model (one of: " +
                                         join(wrapper.model_names()) + ")");
    }
    name = wrapper.model_names().front();
  }
  UnwrapOptions options;
  options.device = args.device;
  options.use_fast_load = args.fast_load;
  options.prefetch = args.prefetch;
  Unwrapped unwrapped = wrapper.unwrap(options);
  for (const std::string& warning : unwrapped.warnings()) std::fprintf(stderr, "zcwrap: warning: %s\n", warning.c_str());
  Unwrapped::Model model = unwrapped.model(name);
  std::vector<c10::IValue> inputs = read_inputs(args.input, c10::Device(unwrapped.device()));

  // forward through run(), which runs every kind; another method of a
  // TorchScript module by its name.
  std::optional<torch::jit::Method> method;
  if (args.method != "forward") {
    torch::jit::Module& module = model.module();
    if (auto found = module.find_method(args.method)) method.emplace(*found);
    if (!method) {
      std::vector<std::string> methods;
      for (const auto& m : module.get_methods()) methods.push_back(m.name());
      throw Error(ErrorCode::kUsage, "model '" + name + "' has no method '" + args.method + "' (it has: " +
                                         join(methods) + ")");
    }
  }
  c10::IValue result;
  try {
    torch::NoGradGuard no_grad;
    result = method ? (*method)(std::move(inputs)) : model.run(std::move(inputs));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, args.input + ": model '" + name + "' failed on this input: " +
                                          torch_message(e));
  }
  const std::vector<char> bytes = torch::jit::pickle_save(to_cpu(result));
  write_file_atomically(output, std::string(bytes.begin(), bytes.end()));
  return 0;
}

}  // namespace

void setup_run(CLI::App& app, int& status) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Run one call of a model from a blob");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_option("-i,--input", args->input, "torch.save of a tensor, or of a tuple (positional arguments)")
      ->required()
      ->type_name("IN.pt");
  cmd->add_option("-o,--output", args->output, "Where to torch.save the result (opens with torch.load); - for standard output")
      ->required()
      ->type_name("OUT.pt");
  cmd->add_option("--model", args->model, "Which model of a pipeline to run")->type_name("NAME");
  cmd->add_option("--method", args->method, "Method to call")->capture_default_str();
  cmd->add_option("--device", args->device, "Device to unwrap onto (cpu, cuda:N)")->capture_default_str();
  add_prefetch_option(cmd, &args->prefetch);
  cmd->add_flag("--fast-load", args->fast_load,
                "On cuda:N, stream the weights into one device buffer through pinned memory (needs -Dcuda)");
  cmd->callback([args, &status] { status = run_run(*args); });
}

}  // namespace zcwrap::cli
