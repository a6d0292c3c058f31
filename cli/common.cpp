#include "common.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <map>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "actor_config.hpp"
#include "zcwrap/error.hpp"
#include "file_util.hpp"

namespace zcwrap::cli {

std::optional<ModelFile> parse_name_path(const std::string& spec) {
  const size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) return std::nullopt;
  return ModelFile{spec.substr(0, eq), spec.substr(eq + 1)};
}

std::string printable(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte != 0x7f) {
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", byte);
      out += buf;
    }
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", value, units[unit]);
  }
  return buf;
}

bool parse_size(const std::string& text, uint64_t* out) {
  if (text.empty()) return false;
  size_t digits = text.find_first_not_of("0123456789");
  if (digits == 0 || (digits != std::string::npos && digits + 1 != text.size())) return false;
  uint64_t shift = 0;
  if (digits != std::string::npos) {
    switch (text[digits]) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      default: return false;
    }
  }
  const std::string number = text.substr(0, digits);
  if (number.size() > 12) return false;
  *out = std::stoull(number) << shift;
  return true;
}

std::string output_path(const std::string& option) {
  if (option != "-") return option;
  if (::isatty(STDOUT_FILENO)) {
    throw zcwrap::Error(zcwrap::ErrorCode::kUsage, "-o -: standard output is a terminal; redirect it to a file or a pipe");
  }
  return "/dev/stdout";
}

void check_outputs(const std::vector<std::string>& outputs, const std::vector<std::string>& inputs) {
  struct Named {
    const std::string* path;
    const char* role;
  };
  std::vector<Named> all;
  for (const std::string& o : outputs) all.push_back({&o, "output"});
  for (const std::string& i : inputs) all.push_back({&i, "input"});
  auto same = [](const std::string& a, const std::string& b) {
    struct stat sa {}, sb {};
    const bool has_a = ::stat(a.c_str(), &sa) == 0, has_b = ::stat(b.c_str(), &sb) == 0;
    if (has_a && has_b) {
      return S_ISREG(sa.st_mode) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    }
    return !has_a && !has_b && detail::absolute_path(a) == detail::absolute_path(b);
  };
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = i + 1; j < all.size(); ++j) {
      if (!all[j].path->empty() && same(outputs[i], *all[j].path)) {
        throw zcwrap::Error(zcwrap::ErrorCode::kUsage, outputs[i] + ": is also the " + all[j].role + " " + *all[j].path +
                                           "; writing it would destroy that: choose another output");
      }
    }
  }
}

void write_file_atomically(const std::string& path, const std::string& text) {
  detail::AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

void write_actor_config(const ModelWrapper& wrapper, const std::string& config_path) {
  const detail::ActorConfig config{wrapper.blob_path(), wrapper.blob_size(), wrapper.meta_checksum(),
                                   wrapper.is_standalone_module(), wrapper.model_names()};
  const std::string config_dir = detail::parent_dir(detail::absolute_path(config_path));
  write_file_atomically(config_path, detail::actor_config_json(config, config_dir).dump(2) + "\n");
}

namespace {

// --prefetch's names, as CLI11's transformer takes them.
std::map<std::string, Prefetch> prefetch_modes() {
  std::map<std::string, Prefetch> modes;
  for (size_t i = 0; i < std::size(kPrefetchNames); ++i) modes.emplace(kPrefetchNames[i], static_cast<Prefetch>(i));
  return modes;
}

}  // namespace

void add_prefetch_option(CLI::App* cmd, Prefetch* prefetch) {
  cmd->add_option("--prefetch", *prefetch,
                  "Warm the weights' pages at unwrap: none (fault in on use), willneed (kernel reads ahead),\n"
                  "populate (read all before unwrap returns), lock (populate, then mlock; a warning if the\n"
                  "memlock limit is too low). Any but none also asks for huge pages (MADV_HUGEPAGE) when the\n"
                  "blob was packed with --align 2M")
      ->transform(CLI::CheckedTransformer(prefetch_modes(), CLI::ignore_case).description(""))
      ->type_name("MODE")
      ->default_str("none");
}


}  // namespace zcwrap::cli
