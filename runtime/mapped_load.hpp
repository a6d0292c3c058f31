// Loading a TorchScript file for packing without copying its tensors. Internal.
#pragma once

#include <optional>
#include <string>

#include <torch/script.h>

namespace zcwrap::detail {

// Loads `path` with every tensor whose record is at least 8 bytes pointing
// into a read-only mapping of the file (kept alive by the tensors), and the
// graph constants of frozen methods already moved to buffers. Returns
// nullopt for archives this path does not handle (quantized tensors, custom
// classes, __setstate__, anything whose storages it cannot account for): load
// those with torch::jit::load. Throws what torch::jit::load throws.
std::optional<torch::jit::Module> load_mapped(const std::string& path, torch::jit::ExtraFilesMap& extra_files);

}  // namespace zcwrap::detail
