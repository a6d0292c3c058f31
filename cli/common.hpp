// Helpers shared by the zcwrap subcommands.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "text.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace CLI {
class App;
}  // namespace CLI

namespace zcwrap::cli {

// `text` safe to print on one terminal line: control characters (newline,
// escape, ...) become visible escapes (\n, \x1b). For everything printed
// that comes from a file or a file name.
std::string printable(const std::string& text);

// "1.5 MiB", "812 B".
std::string human_bytes(uint64_t bytes);

using detail::join;  // "a, b, c"

// NAME=PATH, as pack --model and bench --baseline take it; std::nullopt
// when there is no '=' or either side is empty.
std::optional<ModelFile> parse_name_path(const std::string& spec);

// Parses "4096", "64K", "2M" (binary units). False when malformed.
bool parse_size(const std::string& text, uint64_t* out);

// What an -o option names: "-" is standard output ("/dev/stdout", written
// through); a terminal there is refused (Error(kUsage)), binary output would
// only garble it.
std::string output_path(const std::string& option);

// Refuses, before anything is written, an output that is the same file as an
// input or as another output (same device and inode after following links,
// or the same path for files not there yet): Error(kUsage) naming both.
// Devices (/dev/null, standard output) are not compared.
void check_outputs(const std::vector<std::string>& outputs, const std::vector<std::string>& inputs);

// Writes `text` to `path` atomically. Throws zcwrap::Error(kWrite).
void write_file_atomically(const std::string& path, const std::string& text);

// Writes the actor config of `wrapper` to `config_path` atomically; the blob
// is named relative to the config's folder when both share it, so the pair
// can be moved together.
void write_actor_config(const ModelWrapper& wrapper, const std::string& config_path);

// Adds --prefetch none|willneed|populate|lock (UnwrapOptions::prefetch).
void add_prefetch_option(CLI::App* cmd, Prefetch* prefetch);

}  // namespace zcwrap::cli
