// The subcommands. Each file cmd_NAME.cpp registers its subcommand with
// setup_NAME(); when it is chosen, its run function's exit status is stored
// in `status`. Failures are thrown as zcwrap::Error and printed by main.
#pragma once

namespace CLI {
class App;
}  // namespace CLI

namespace zcwrap::cli {

void setup_pack(CLI::App& app, int& status);
void setup_inspect(CLI::App& app, int& status);
void setup_run(CLI::App& app, int& status);
void setup_bench(CLI::App& app, int& status);
void setup_verify(CLI::App& app, int& status);
void setup_unpack(CLI::App& app, int& status);
void setup_gc(CLI::App& app, int& status);

}  // namespace zcwrap::cli
