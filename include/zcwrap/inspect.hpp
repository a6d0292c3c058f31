// A description of a blob, for people and scripts (`zcwrap inspect`).
#pragma once

#include <string>

#include <nlohmann/json_fwd.hpp>

namespace zcwrap {

/// Describes the blob at `path`, or the blob an actor config at `path` names,
/// after the checks every open makes (header, meta checksum, manifest); it
/// neither loads the skeletons nor reads the weights. The JSON form is documented in
/// docs/FORMAT.md ("inspect --json"). Throws zcwrap::Error.
nlohmann::json describe(const std::string& path);

}  // namespace zcwrap
