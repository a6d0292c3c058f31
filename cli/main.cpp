// zcwrap: pack TorchScript models into mmap-able blobs and work with them.
// Only assembles the subcommands and turns errors into exit statuses.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "zcwrap/zcwrap.hpp"

int main(int argc, char** argv) {
  CLI::App app("zcwrap: pack TorchScript models into a page-aligned blob that many worker\n"
               "processes map read-only and share (one copy of the weights per machine).",
               "zcwrap");
  app.set_version_flag("--version", std::string("zcwrap ") + zcwrap::kVersion + " (libtorch " +
                                        zcwrap::kLibTorchVersion + ")");
  app.set_help_all_flag("--help-all", "Print help for every subcommand");
  app.require_subcommand(1);
  app.footer("Exit status: 0 ok, 1 internal error, 2 usage, 3 unreadable input, 4 bad blob or config,\n"
             "5 bad model, 6 cannot write output, 7 device, 8 stale actor config. See zcwrap(1).");
  int status = 0;
  zcwrap::cli::setup_pack(app, status);
  zcwrap::cli::setup_inspect(app, status);
  zcwrap::cli::setup_run(app, status);
  zcwrap::cli::setup_bench(app, status);
  zcwrap::cli::setup_verify(app, status);
  zcwrap::cli::setup_unpack(app, status);
  zcwrap::cli::setup_gc(app, status);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "zcwrap: error: %s (see zcwrap --help)\n", zcwrap::cli::printable(e.what()).c_str());
    return zcwrap::exit_status(zcwrap::ErrorCode::kUsage);
  } catch (const zcwrap::Error& e) {
    std::fprintf(stderr, "zcwrap: error: %s\n", zcwrap::cli::printable(e.what()).c_str());
    return zcwrap::exit_status(e.code());
  } catch (const std::exception& e) {
    // Only the first line: LibTorch appends a C++ backtrace to its messages.
    std::string message = e.what();
    std::fprintf(stderr, "zcwrap: error: internal: %s\n",
                 zcwrap::cli::printable(message.substr(0, message.find('\n'))).c_str());
    return zcwrap::exit_status(zcwrap::ErrorCode::kInternal);
  }
  return status;
}
