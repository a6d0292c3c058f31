// zcwrap unpack: a model from a blob back to a standard TorchScript file, or
// to the AOTInductor package it was packed from.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

struct UnpackArgs {
  std::string path;
  std::string output;
  std::string model;
  bool quiet = false;
};

int run_unpack(const UnpackArgs& args) {
  const std::string output = output_path(args.output);
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  check_outputs({output}, {args.path, wrapper.blob_path()});
  wrapper.unpack(output, args.model);
  if (!args.quiet && output != "/dev/stdout") {
    const std::string name = args.model.empty() ? wrapper.model_names().front() : args.model;
    const auto& names = wrapper.model_names();
    const size_t index = static_cast<size_t>(std::find(names.begin(), names.end(), name) - names.begin());
    const bool package = index < names.size() && wrapper.model_kinds()[index] == "aot_inductor";
    std::printf("unpacked model '%s' to %s (%s)\n", name.c_str(), args.output.c_str(),
                package ? "an AOTInductor package: torch._inductor.aoti_load_package loads it"
                        : "opens with torch.jit.load");
  }
  return 0;
}

}  // namespace

void setup_unpack(CLI::App& app, int& status) {
  auto args = std::make_shared<UnpackArgs>();
  CLI::App* cmd = app.add_subcommand("unpack", "Write a model of a blob back as a standard TorchScript file");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_option("-o,--output", args->output, "The TorchScript file to write (torch.jit.load opens it); - for standard output")
      ->required()
      ->type_name("MODEL.pt");
  cmd->add_option("--model", args->model, "Which model of a pipeline")->type_name("NAME");
  cmd->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  cmd->callback([args, &status] { status = run_unpack(*args); });
}

}  // namespace zcwrap::cli
